"""MobileNetV3_large (models/mobilenet_v3.py): the same function as an independent definition, its stem and last
stride, a short training run and the export. Names, shapes and the parameter count: tests/models/test_builders.py."""
import numpy as np
import paddle
import pytest
from backbone_checks import exported_features
from train_runs import END_PASS, PROGRESS, read_log, run_train

from models import build_model
from models.mobilenet_v3 import make_divisible


def images(batch=2, size=64, seed=0):
    return np.random.default_rng(seed).random((batch, 3, size, size), dtype=np.float32)


def test_squeezed_widths_round_a_quarter_to_a_multiple_of_8():
    # The table's SE blocks expand to 72, 120, 480, 672 and 960 channels; 72 / 4 = 18 rounds up to 24.
    assert [make_divisible(width / 4) for width in (72, 120, 480, 672, 960)] == [24, 32, 120, 168, 240]


def test_same_function_as_paddle_vision_mobilenet_v3_large():
    """paddle.vision's mobilenet_v3_large (Paddle's model zoo, written after torchvision's) with our weights,
    copied in order (its SE layers are 1x1 convolutions, ours fully connected: transposed), and random
    running statistics: the same logits in evaluation mode."""
    rng = np.random.default_rng(0)
    ours = build_model("MobileNetV3_large", num_classes=1000)
    reference = paddle.vision.models.mobilenet_v3_large(scale=1.0, num_classes=1000)
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert len(ours_state) == len(reference_state) == 266
    for (name, value), target in zip(ours_state.items(), reference_state.values()):
        if name.endswith("_variance"):
            array = rng.uniform(0.5, 2.0, value.shape)
        elif name.endswith(("_mean", "_offset", "_scale")):
            array = rng.normal(0.2, 0.3, value.shape)
        else:
            array = value.numpy()
        value.set_value(array.astype("float32"))
        if len(target.shape) == 4 and target.shape[2:] == [1, 1] and len(value.shape) == 2:
            array = array.T[:, :, None, None]  # SE layer: [in, out] -> [out, in, 1, 1]
        assert list(array.shape) == list(target.shape), name
        target.set_value(array.astype("float32"))
    ours.eval()
    reference.eval()
    x = paddle.to_tensor(images())
    logits = ours(x).logits.numpy()
    expected = reference(x).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("options, side", [({}, 2), ({"stem": "small"}, 4), ({"last_stride": 1}, 4),
                                           ({"stem": "small", "last_stride": 1}, 8)])
def test_small_stem_and_last_stride_1_each_double_the_final_map_with_the_same_parameters(options, side):
    model = build_model("MobileNetV3_large", 10, **options)
    model.eval()
    x = paddle.to_tensor(images(batch=1))
    assert model.backbone.feature_map(x).shape == [1, 960, side, side]  # 64 px input
    assert model(x).metric_embedding.shape == [1, 1280]
    default = build_model("MobileNetV3_large", 10)
    assert [(p.name, p.shape) for p in model.parameters()] == [(p.name, p.shape) for p in default.parameters()]


def test_trains_two_steps_and_evaluates_through_its_export(tiny_dataset, tmp_path, capsys):
    # The validation after the last step embeds the val list with the exported program in Paddle Inference.
    run_train(tiny_dataset, str(tmp_path), "--embedding_size=16", model="MobileNetV3_large", iters=2)
    out = capsys.readouterr().out
    steps = PROGRESS.findall(out)
    assert len(steps) == 2 and all(np.isfinite(float(step[3])) for step in steps)
    (_, _, _, _, _, recall), = END_PASS.findall(out)
    assert 0 <= float(recall) <= 1
    assert [record["iter"] for record in read_log(str(tmp_path)) if "loss_metric" in record] == [0, 1]


def test_exported_model_embeds_as_the_program(tmp_path):
    # At 32 px with the ImageNet stem the last map is 1x1; the small stem is what such inputs use.
    executed, exported = exported_features("MobileNetV3_large", tmp_path / "exported", stem="small")
    assert executed.shape == (2, 1280) and np.isfinite(executed).all()
    # Untrained, with running statistics 0 and 1, the features are tiny (~1e-9): compare relative to their size.
    assert not np.allclose(executed[0], executed[1], rtol=1e-2, atol=0)
    np.testing.assert_allclose(exported, executed, rtol=1e-4, atol=1e-5 * np.abs(executed).max())
