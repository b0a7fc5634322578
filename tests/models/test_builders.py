import numpy as np
import paddle
import pytest
from paddle.utils import unique_name

from models import MODELS, build_model
from models.layers import SqueezeExcitation
from utility.errors import UserError
from backbone_checks import shapes_only, uninitialised_parameters
from paddle_modes import static_mode

FEATURE_DIMS = {"ResNet18": 512, "ResNet34": 512, "ResNet50": 2048, "SE_ResNeXt50_32x4d": 2048,
                "ResNet50_IBN_a": 2048, "SE_ResNet50": 2048, "MobileNetV3_large": 1280}

# Trainable parameters with a 1000-way classifier, embedding_size=0.
PUBLISHED_PARAMETER_COUNTS = {
    # torchvision resnet50 (the "ResNet-50" figure quoted everywhere).
    "ResNet50": 25_557_032,
    # Cadene's pretrainedmodels se_resnext50_32x4d, also asserted in osmr/imgclsmob.
    "SE_ResNeXt50_32x4d": 27_559_896,
    # torchvision resnet18/34 (11,689,512 / 21,797,672) plus the 1x1 projection
    # shortcut Paddle's ResNet18/34 add to block res2a: 64*64 weights + 2*64 BN.
    "ResNet18": 11_689_512 + 64 * 64 + 2 * 64,
    "ResNet34": 21_797_672 + 64 * 64 + 2 * 64,
    # osmr/imgclsmob asserts 25,557,032 for its ibn_resnet50: ResNet-50's count, as the instance norm's scale
    # and shift replace batch norm's one for one (the authors' repository publishes no count).
    "ResNet50_IBN_a": 25_557_032,
    # osmr/imgclsmob asserts 28,088,024 (the "28.09M" usually quoted) for its seresnet50: ResNet-50 plus
    # 2,530,992 gate weights and biases.
    "SE_ResNet50": 28_088_024,
    # torchvision's mobilenet_v3_large (MobileNet_V3_Large_Weights meta "num_params"); paddle.vision's
    # mobilenet_v3_large(scale=1.0) has the same count.
    "MobileNetV3_large": 5_483_032,
}

DOCUMENTED_NAMES = {
    "ResNet50": ["conv1_weights", "bn_conv1_scale", "bn_conv1_offset", "bn_conv1_mean",
                 "bn_conv1_variance", "res2a_branch2a_weights", "bn2a_branch2a_scale",
                 "res2a_branch1_weights", "bn2a_branch1_variance", "res5c_branch2c_weights"],
    "ResNet18": ["conv1_weights", "res2a_branch1_weights", "res5b_branch2b_weights"],
    "SE_ResNeXt50_32x4d": ["conv1_weights", "conv1_bn_scale", "conv1_bn_mean",
                           "conv2_1_x1_weights", "conv2_1_x2_bn_variance", "conv2_1_prj_weights",
                           "fc2_1_sqz_weights", "fc2_1_sqz_offset", "fc5_3_exc_weights",
                           "conv5_3_x3_bn_offset"],
    "ResNet50_IBN_a": ["conv1_weights", "res2a_branch2a_weights", "in2a_branch2a_scale", "in2a_branch2a_offset",
                       "bn2a_branch2a_scale", "bn2a_branch2a_variance", "in4f_branch2a_scale",
                       "bn5a_branch2a_mean", "res5c_branch2c_weights"],
    "SE_ResNet50": ["conv1_weights", "res2a_branch2a_weights", "bn2a_branch1_variance", "fc_res2a_sqz_weights",
                    "fc_res2a_sqz_offset", "fc_res5c_exc_weights", "fc_res5c_exc_offset"],
    "MobileNetV3_large": ["conv1_weights", "conv1_bn_scale", "conv2_depthwise_weights", "conv2_linear_bn_mean",
                          "conv3_expand_weights", "conv5_se_sqz_weights", "conv16_se_exc_offset",
                          "conv_last_weights", "conv_last_bn_variance", "last_1x1_conv_weights",
                          "last_1x1_conv_offset"],
}


def images(batch=2, size=32, seed=0):
    return np.random.default_rng(seed).random((batch, 3, size, size), dtype=np.float32)




def build_static(name, num_classes=0, embedding_size=0):
    """Build the model in a fresh static Program; returns (main, startup, NetworkOutput)."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        inputs = paddle.static.data("images", [-1, 3, 32, 32], "float32")
        outputs = build_model(name, num_classes, embedding_size)(inputs)
    return main, startup, outputs


def static_parameter_names(program):
    return sorted(p.name for p in program.global_block().all_parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_backbone_embedding_shape_on_32px_images(name):
    with shapes_only(batch=2, size=32) as image:
        model = build_model(name)
        model.eval()
        embedding, logits, inference_embedding, _ = model(image)
        assert embedding.shape == [2, FEATURE_DIMS[name]]
        assert inference_embedding is embedding  # no neck: one feature for the loss and for retrieval
        assert logits is None
    assert model.embedding_dim == FEATURE_DIMS[name] and model.num_classes == 0


@pytest.mark.parametrize("num_classes, embedding_size", [(0, 0), (0, 16), (7, 0), (7, 16)])
def test_head_shapes(num_classes, embedding_size):
    with shapes_only(batch=3, size=32) as image:
        model = build_model("ResNet18", num_classes=num_classes, embedding_size=embedding_size)
        model.eval()
        embedding, logits, _, _ = model(image)
        expected_dim = embedding_size or 512
        assert model.embedding_dim == expected_dim and embedding.shape == [3, expected_dim]
        if num_classes:
            assert logits.shape == [3, num_classes]
        else:
            assert logits is None


def test_head_is_affine_projection_then_classifier():
    model = build_model("ResNet18", num_classes=5, embedding_size=8)
    model.eval()
    x = paddle.to_tensor(images())
    pooled = model.backbone(x).numpy()
    embedding, logits, _, _ = model(x)
    weights = {p.name: p.numpy() for p in model.parameters()}
    expected_embedding = pooled @ weights["embedding_fc_weights"] + weights["embedding_fc_offset"]
    expected_logits = expected_embedding @ weights["classifier_fc_weights"] + weights["classifier_fc_offset"]
    np.testing.assert_allclose(embedding.numpy(), expected_embedding, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), expected_logits, rtol=1e-4, atol=1e-5)


def test_squeeze_excitation_matches_numpy():
    with unique_name.guard():
        se = SqueezeExcitation(channels=32, squeezed_channels=2, name="test_se")
    x = images(batch=2, size=5)[:, :1].repeat(32, axis=1) * np.arange(32, dtype=np.float32)[:, None, None]
    w = {p.name: p.numpy() for p in se.parameters()}
    hidden = np.maximum(x.mean(axis=(2, 3)) @ w["test_se_sqz_weights"] + w["test_se_sqz_offset"], 0)
    gate = 1 / (1 + np.exp(-(hidden @ w["test_se_exc_weights"] + w["test_se_exc_offset"])))
    np.testing.assert_allclose(se(paddle.to_tensor(x)).numpy(), x * gate[:, :, None, None],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETER_COUNTS))
def test_parameter_counts_match_published(name):
    parameters = uninitialised_parameters(name, num_classes=1000)
    trainable = [p for p in parameters if p.trainable]
    frozen = [p for p in parameters if not p.trainable]
    assert sum(int(np.prod(p.shape)) for p in trainable) == PUBLISHED_PARAMETER_COUNTS[name]
    # The only non-trainable parameters are the batch-norm running statistics.
    assert frozen and all(p.name.endswith(("_mean", "_variance")) for p in frozen)
    assert not any(p.name.endswith(("_mean", "_variance")) for p in trainable)


def test_unknown_model_is_a_user_error_listing_the_names():
    with pytest.raises(UserError) as error:
        build_model("ResNet101")
    assert "ResNet101" in str(error.value)
    assert all(name in str(error.value) for name in MODELS)


def test_negative_sizes_are_user_errors():
    with pytest.raises(UserError, match="0 or more"):
        build_model("ResNet18", embedding_size=-1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_names_are_stable_and_documented(name):
    eager_names = [p.name for p in uninitialised_parameters(name, 10, 16)]
    assert len(set(eager_names)) == len(eager_names)
    assert {"embedding_fc_weights", "embedding_fc_offset",
            "classifier_fc_weights", "classifier_fc_offset"} <= set(eager_names)
    assert set(DOCUMENTED_NAMES.get(name, ["conv1_weights"])) <= set(eager_names)
    with static_mode():
        first = static_parameter_names(build_static(name, 10, 16)[0])
        second = static_parameter_names(build_static(name, 10, 16)[0])
    assert first == second == sorted(eager_names)


def test_static_program_runs_and_matches_eager_with_the_same_weights(tmp_path):
    x = images(batch=4)
    with static_mode():
        main, startup, (embedding, logits, _, _) = build_static("ResNet18", num_classes=5, embedding_size=8)
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(startup)
            weights = {name: np.array(scope.find_var(name).get_tensor())
                       for name in static_parameter_names(main)}
            static_embedding, static_logits = exe.run(main, feed={"images": x},
                                                      fetch_list=[embedding, logits])
            paddle.static.save(main, str(tmp_path / "resnet18"))
    assert static_embedding.shape == (4, 8) and static_logits.shape == (4, 5)
    saved = paddle.static.load_program_state(str(tmp_path / "resnet18"))
    assert sorted(saved) == sorted(weights)
    assert "bn_conv1_mean" in saved and "bn_conv1_variance" in saved

    # Same weights, loaded by name into an eager model in training mode (batch
    # statistics, like the static train program): same outputs.
    model = build_model("ResNet18", num_classes=5, embedding_size=8)
    for parameter in model.parameters():
        parameter.set_value(weights[parameter.name])
    eager_embedding, eager_logits, _, _ = model(paddle.to_tensor(x))
    np.testing.assert_allclose(eager_embedding.numpy(), static_embedding, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eager_logits.numpy(), static_logits, rtol=1e-4, atol=1e-5)
