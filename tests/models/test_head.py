"""BNNeck (--neck bnneck, --neck_feat), --last_stride and --stem: shapes, names, training and inference features."""
import contextlib

import numpy as np
import paddle
import pytest
from backbone_checks import shapes_only, uninitialised_parameters
from paddle_modes import static_mode

import losses
from cli.args import defaults, parse_args
from engine import programs
from engine.embedder import Embedder
from models import MODELS, build_model
from utility.errors import UserError

NECK_NAMES = {"neck_bn_scale", "neck_bn_offset", "neck_bn_mean", "neck_bn_variance"}
EPSILON = 1e-5  # Paddle's batch-norm default, used by the neck


def images(batch=2, size=32, seed=0):
    return np.random.default_rng(seed).random((batch, 3, size, size), dtype=np.float32)


# One model per trunk code path (ResNet34 is ResNet18's class with other depths; tests/models/test_builders.py
# checks every model's names, counts and shapes).
TRUNKS = ["ResNet18", "ResNet50", "SE_ResNeXt50_32x4d"]


def parameter_count(parameters, trainable=True):
    return sum(int(np.prod(p.shape)) for p in parameters if p.trainable == trainable)


# ---- shapes, names, counts -------------------------------------------------------------------

@pytest.mark.parametrize("num_classes, embedding_size", [(0, 0), (7, 0), (7, 16)])
def test_bnneck_shapes(num_classes, embedding_size):
    with shapes_only(batch=3, size=32) as image:
        model = build_model("ResNet18", num_classes, embedding_size, neck="bnneck")
        model.eval()
        metric, logits, inference, _ = model(image)
        dim = embedding_size or 512
        assert metric.shape == inference.shape == [3, dim]
        assert (logits is None) if num_classes == 0 else logits.shape == [3, num_classes]


def test_bnneck_parameter_names_and_bias_free_classifier():
    plain = {p.name for p in uninitialised_parameters("ResNet18", 5, 8)}
    necked = {p.name for p in uninitialised_parameters("ResNet18", 5, 8, neck="bnneck")}
    assert necked - plain == NECK_NAMES
    assert plain - necked == {"classifier_fc_offset"}
    frozen = {p.name for p in uninitialised_parameters("ResNet18", 5, 8, neck="bnneck") if not p.trainable}
    assert {"neck_bn_offset", "neck_bn_mean", "neck_bn_variance"} <= frozen
    assert "neck_bn_scale" not in frozen
    # Built without a classifier too (the embedding program of eval.py / infer.py).
    assert NECK_NAMES <= {p.name for p in uninitialised_parameters("ResNet18", neck="bnneck")}


def test_bnneck_trainable_count_is_scale_minus_classifier_bias():
    plain = parameter_count(uninitialised_parameters("ResNet18", 1000))
    necked = parameter_count(uninitialised_parameters("ResNet18", 1000, neck="bnneck"))
    assert necked == plain + 512 - 1000


def test_defaults_are_the_plain_network():
    args = defaults("train")
    assert (args.neck, args.neck_feat, args.last_stride, args.stem) == ("none", "after", 2, "imagenet")
    default = [(p.name, tuple(p.shape)) for p in uninitialised_parameters("ResNet18", 10, 16)]
    explicit = [(p.name, tuple(p.shape)) for p in uninitialised_parameters("ResNet18", 10, 16, neck="none",
                                                                          neck_feat="after", last_stride=2,
                                                                          stem="imagenet")]
    assert default == explicit
    assert not any(name.startswith("neck_") for name, _ in default)


def test_bnneck_in_eval_mode_is_the_running_statistics_formula():
    model = build_model("ResNet18", 4, 0, neck="bnneck")
    rng = np.random.default_rng(1)
    values = {"neck_bn_mean": rng.normal(size=512), "neck_bn_variance": rng.uniform(0.5, 2, 512),
              "neck_bn_scale": rng.uniform(0.5, 1.5, 512)}
    for p in model.parameters():
        if p.name in values:
            p.set_value(values[p.name].astype("float32"))
    model.eval()
    metric, logits, inference, _ = model(paddle.to_tensor(images()))
    expected = (metric.numpy() - values["neck_bn_mean"]) / np.sqrt(values["neck_bn_variance"] + EPSILON) \
        * values["neck_bn_scale"]
    np.testing.assert_allclose(inference.numpy(), expected, rtol=1e-4, atol=1e-5)
    weights = {p.name: p.numpy() for p in model.parameters()}
    np.testing.assert_allclose(logits.numpy(), expected @ weights["classifier_fc_weights"], rtol=1e-4, atol=1e-4)

    model = build_model("ResNet18", 4, 0, neck="bnneck", neck_feat="before")
    model.eval()
    metric, _, inference, _ = model(paddle.to_tensor(images()))
    np.testing.assert_array_equal(inference.numpy(), metric.numpy())


@pytest.mark.parametrize("flag", ["--neck=bn", "--neck_feat=middle", "--last_stride=3", "--last_stride=x", "--stem=cifar"])
def test_bad_flag_values_are_user_errors(flag):
    with pytest.raises(UserError):
        parse_args("train", [flag])


@pytest.mark.parametrize("option", [{"neck": "bn"}, {"neck_feat": "middle"}, {"last_stride": 3}, {"stem": "cifar"}])
def test_bad_options_of_build_model_are_user_errors(option):
    with pytest.raises(UserError, match=next(iter(option))):
        build_model("ResNet18", **option)


def test_every_model_is_a_trunk_tested_here_or_shares_one():
    # ResNet50_IBN_a and SE_ResNet50 are ResNet's trunk class with other blocks (models/resnet.py);
    # MobileNetV3's stem and last stride are tested in tests/models/test_mobilenet_v3.py.
    shares_a_trunk = {"ResNet34", "ResNet50_IBN_a", "SE_ResNet50", "MobileNetV3_large"}
    assert set(TRUNKS) | shares_a_trunk == set(MODELS), "a new model family needs its place in TRUNKS"


# ---- last stride ------------------------------------------------------------------------------

def final_feature_map(model, image):
    backbone = model.backbone
    return backbone.blocks(backbone.max_pool(backbone.stem(image)))


@pytest.mark.parametrize("name", TRUNKS)
def test_last_stride_1_doubles_the_final_map_with_the_same_parameters(name):
    shapes, parameters = {}, {}
    for stride in (1, 2):
        with shapes_only(batch=1, size=64) as image:
            model = build_model(name, 10, last_stride=stride)
            model.eval()
            shapes[stride] = final_feature_map(model, image).shape
            parameters[stride] = [(p.name, tuple(p.shape)) for p in model.parameters()]
            metric, _, _, _ = model(image)
            assert metric.shape == [1, model.backbone.feature_dim]
    channels = 2048 if "50" in name else 512
    assert shapes[2] == [1, channels, 2, 2] and shapes[1] == [1, channels, 4, 4]
    assert parameters[1] == parameters[2]


def test_last_stride_reaches_the_embedding_program():
    x = images(batch=2, size=64)
    outputs = {}
    with static_mode():
        for stride in (1, 2):
            config = defaults("eval", model="ResNet18", image_shape=(3, 64, 64), last_stride=stride)
            graph = programs.build_embed_graph(config)
            scope = paddle.static.Scope()
            with paddle.static.scope_guard(scope):
                exe = paddle.static.Executor(paddle.CPUPlace())
                paddle.seed(0)
                exe.run(graph.startup)
                outputs[stride] = exe.run(graph.program, feed={programs.IMAGE: x}, fetch_list=[graph.embedding])[0]
                ops = [op for op in graph.program.global_block().ops if op.name() == "pd_op.conv2d"]
                strides = [op.attrs()["strides"] for op in ops]
            assert outputs[stride].shape == (2, 512)
            # Stride-2 convolutions: the stem, the first block of stages 3 and 4 (3x3 convolution and
            # shortcut), and that of stage 5 only with last stride 2.
            assert strides.count([2, 2]) == 1 + 2 * 2 + 2 * (stride == 2)
    assert not np.allclose(outputs[1], outputs[2])


# ---- stem ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TRUNKS)
def test_small_stem_doubles_every_map_and_changes_only_the_first_convolution(name):
    shapes, parameters = {}, {}
    for stem in ("imagenet", "small"):
        with shapes_only(batch=1, size=32) as image:
            model = build_model(name, 10, stem=stem)
            model.eval()
            shapes[stem] = final_feature_map(model, image).shape
            parameters[stem] = {p.name: tuple(p.shape) for p in model.parameters()}
    channels = 2048 if "50" in name else 512
    assert shapes["imagenet"] == [1, channels, 1, 1] and shapes["small"] == [1, channels, 2, 2]
    assert parameters["imagenet"].pop("conv1_weights") == (64, 3, 7, 7)
    assert parameters["small"].pop("conv1_weights") == (64, 3, 3, 3)
    assert parameters["imagenet"] == parameters["small"]


def test_stem_reaches_the_embedding_program():
    with static_mode():
        config = defaults("eval", model="ResNet18", image_shape=(3, 32, 32), stem="small")
        graph = programs.build_embed_graph(config)
        first = next(op for op in graph.program.global_block().ops if op.name() == "pd_op.conv2d")
        assert first.attrs()["strides"] == [1, 1]
        assert first.operand_source(1).shape == [64, 3, 3, 3]


# ---- training and inference with the neck (static programs) ------------------------------------

def train_config(**overrides):
    settings = dict(model="ResNet18", image_shape=(3, 32, 32), neck="bnneck", loss_name="batchhardtripletloss",
                    alpha=1.0, lr=0.01, use_gpu=False)
    settings.update(overrides)
    return defaults("train", **settings)


@contextlib.contextmanager
def started_train_graph(config, num_classes=4):
    """(train graph, scope, Executor) in static mode, startup run, in a scope of the test's own."""
    with static_mode():
        graph = programs.build_train_graph(config, num_classes, 10)
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(graph.startup)
            yield graph, scope, exe


def read(scope, name):
    return np.array(scope.find_var(name).get_tensor()).copy()


def pk_batch(seed=0, classes=4, k=2):
    labels = np.repeat(np.arange(classes), k).astype("int64")
    return images(batch=classes * k, seed=seed), labels


def eager_copy(config, num_classes, weights):
    """The same network in eager mode with the given parameter values (by name)."""
    model = build_model(config.model, num_classes, config.embedding_size, neck=config.neck,
                        neck_feat=config.neck_feat)
    for parameter in model.parameters():
        parameter.set_value(weights[parameter.name])
    return model


def test_training_step_keeps_the_neck_offset_and_trains_its_scale():
    config = train_config()
    with started_train_graph(config) as (graph, scope, exe):
        before = {name: read(scope, name) for name in NECK_NAMES}
        x, y = pk_batch()
        exe.run(graph.main, feed={programs.IMAGE: x, programs.LABEL: y}, fetch_list=list(graph.fetch.values()))
        after = {name: read(scope, name) for name in NECK_NAMES}
    np.testing.assert_array_equal(after["neck_bn_offset"], np.zeros(512, "float32"))
    np.testing.assert_array_equal(before["neck_bn_offset"], after["neck_bn_offset"])
    assert not np.allclose(before["neck_bn_scale"], after["neck_bn_scale"])  # the classifier trains it
    assert not np.allclose(before["neck_bn_mean"], after["neck_bn_mean"])    # running statistics move
    assert not np.allclose(before["neck_bn_variance"], after["neck_bn_variance"])


def test_metric_loss_sees_the_feature_before_the_neck():
    config = train_config()
    with started_train_graph(config) as (graph, scope, exe):
        x, y = pk_batch()
        weights = {p.name: read(scope, p.name) for p in graph.main.global_block().all_parameters()}
        loss_metric, = exe.run(graph.main, feed={programs.IMAGE: x, programs.LABEL: y},
                               fetch_list=[graph.fetch["loss_metric"]])
    # Eager, in training mode like the train program: the loss of the pre-neck feature is the
    # program's, the loss of the post-neck feature is not.
    model = eager_copy(config, 4, weights)
    metric, _, normalised, _ = model(paddle.to_tensor(x))
    spec = losses.get(config.loss_name)
    loss = spec.build_loss(512, 4, spec.params_from(config))
    labels = paddle.to_tensor(y)
    assert float(loss(metric, labels)) == pytest.approx(float(loss_metric), rel=1e-4, abs=1e-6)
    assert float(loss(normalised, labels)) != pytest.approx(float(loss_metric), rel=1e-2, abs=1e-3)


@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_test_program_and_export_give_the_normalised_feature(alpha):
    """After training steps, the train graph's test clone, the embedding program and the exported
    model all give (pre-neck feature - running mean) / sqrt(running variance + eps) * scale."""
    config = train_config(alpha=alpha)
    x = images(batch=5, seed=3)
    with started_train_graph(config) as (graph, scope, exe):
        for step in range(3):
            batch, labels = pk_batch(seed=step)
            exe.run(graph.main, feed={programs.IMAGE: batch, programs.LABEL: labels},
                    fetch_list=list(graph.fetch.values()))
        # A scale far from its start, so that leaving it out could not pass.
        scale = np.random.default_rng(5).uniform(0.5, 2.0, 512).astype("float32")
        scope.find_var("neck_bn_scale").get_tensor().set(scale, paddle.CPUPlace())
        test_features, = exe.run(graph.test, feed={programs.IMAGE: x}, fetch_list=[graph.test_embedding])
        neck = {name: read(scope, name) for name in NECK_NAMES}
        np.testing.assert_array_equal(neck["neck_bn_scale"], scale)
        # The same parameters in the embedding programs of eval.py / infer.py (names are fixed).
        embedded = {}
        for neck_feat in ("after", "before"):
            embed = programs.build_embed_graph(
                defaults("eval", model="ResNet18", image_shape=(3, 32, 32), neck="bnneck",
                         neck_feat=neck_feat, use_gpu=False))
            embedded[neck_feat], = exe.run(embed.program, feed={programs.IMAGE: x},
                                           fetch_list=[embed.embedding])
        exported = Embedder.from_program(exe, graph.test, graph.test_image, graph.test_embedding, config)(x)
    before = embedded["before"]
    by_hand = (before - neck["neck_bn_mean"]) / np.sqrt(neck["neck_bn_variance"] + EPSILON) * neck["neck_bn_scale"] \
        + neck["neck_bn_offset"]
    assert not np.allclose(neck["neck_bn_mean"], 0) and not np.allclose(neck["neck_bn_variance"], 1)
    assert not np.allclose(by_hand, before, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(test_features, by_hand, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(embedded["after"], by_hand, rtol=1e-4, atol=1e-4)
    # Paddle Inference (oneDNN) agrees with the Executor to float32 rounding, relative to the feature's size.
    np.testing.assert_allclose(exported, by_hand, rtol=1e-4, atol=1e-4 * np.abs(by_hand).max())


def test_neck_feat_before_exports_the_feature_before_the_neck():
    config = train_config(neck_feat="before")
    x = images(batch=3, seed=4)
    with started_train_graph(config) as (graph, scope, exe):
        batch, labels = pk_batch()
        exe.run(graph.main, feed={programs.IMAGE: batch, programs.LABEL: labels}, fetch_list=[])
        test_features, = exe.run(graph.test, feed={programs.IMAGE: x}, fetch_list=[graph.test_embedding])
        embed = programs.build_embed_graph(defaults("eval", model="ResNet18", image_shape=(3, 32, 32),
                                                    neck="none", use_gpu=False))
        plain, = exe.run(embed.program, feed={programs.IMAGE: x}, fetch_list=[embed.embedding])
    np.testing.assert_allclose(test_features, plain, rtol=1e-4, atol=1e-5)
