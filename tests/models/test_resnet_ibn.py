"""ResNet50_IBN_a (models/resnet_ibn.py): where the instance norm is, that it normalises each image by its own
statistics, and the export. Names, shapes and the parameter count: tests/models/test_builders.py."""
import numpy as np
import paddle
import pytest
from backbone_checks import exported_features

from models import build_model
from models.resnet_ibn import InstanceBatchNorm

EPSILON = 1e-5  # Paddle's default for instance and batch norm, as torch's


def images(batch=2, channels=3, size=32, seed=0):
    return np.random.default_rng(seed).random((batch, channels, size, size), dtype=np.float32)


def randomise(layer, seed=1):
    """Scales, offsets and running statistics away from their start values (1, 0, 0, 1)."""
    rng = np.random.default_rng(seed)
    for p in layer.parameters():
        if p.name.endswith("_variance"):
            p.set_value(rng.uniform(0.5, 2.0, p.shape).astype("float32"))
        elif p.name.endswith(("_scale", "_offset", "_mean")):
            p.set_value(rng.normal(0.5, 0.3, p.shape).astype("float32"))
    return {p.name: p.numpy() for p in layer.parameters()}


def normalised(x, axes, mean=None, variance=None):
    mean = x.mean(axis=axes, keepdims=True) if mean is None else mean
    variance = x.var(axis=axes, keepdims=True) if variance is None else variance
    return (x - mean) / np.sqrt(variance + EPSILON)


def channel(v):
    return v[None, :, None, None]


@pytest.fixture(scope="module")
def network():
    return build_model("ResNet50_IBN_a")


def test_ibn_is_in_every_bottleneck_of_stages_2_to_4_and_not_in_stage_5(network):
    shapes = {p.name: p.shape for p in network.parameters()}
    blocks = [f"{stage}{chr(ord('a') + i)}" for stage, depth in ((2, 3), (3, 4), (4, 6)) for i in range(depth)]
    instance_norms = sorted(name for name in shapes if name.startswith("in"))
    assert instance_norms == sorted(f"in{b}_branch2a_{kind}" for b in blocks for kind in ("scale", "offset"))
    for block, width in zip(blocks, [64] * 3 + [128] * 4 + [256] * 6):
        assert shapes[f"in{block}_branch2a_scale"] == shapes[f"bn{block}_branch2a_mean"] == [width // 2]
        assert shapes[f"bn{block}_branch2b_scale"] == [width]  # only the first normalisation is split
    assert all(shapes[f"bn5{i}_branch2a_scale"] == [512] for i in "abc")


@pytest.mark.parametrize("training", [True, False])
def test_first_normalisation_of_a_block_is_instance_norm_on_the_first_half(network, training):
    """res2a_branch2a, numpy: 1x1 convolution; channels 0-31 normalised by each image's own mean and variance
    (in training and in evaluation alike), channels 32-63 by the batch's (training) or the running statistics."""
    layer = network.backbone.blocks[0].conv_a
    weights = randomise(layer)
    layer.train() if training else layer.eval()
    x = images(batch=3, channels=64, size=6)
    x[1] *= 5  # images of other contrast and brightness: instance norm removes both
    x[2] += 3
    out = layer(paddle.to_tensor(x)).numpy()

    conv = np.einsum("oc,nchw->nohw", weights["res2a_branch2a_weights"][:, :, 0, 0], x)
    instance_part = normalised(conv[:, :32], axes=(2, 3))
    instance_part = instance_part * channel(weights["in2a_branch2a_scale"]) + channel(weights["in2a_branch2a_offset"])
    if training:
        batch_part = normalised(conv[:, 32:], axes=(0, 2, 3))
    else:
        batch_part = normalised(conv[:, 32:], None, channel(weights["bn2a_branch2a_mean"]),
                                channel(weights["bn2a_branch2a_variance"]))
    batch_part = batch_part * channel(weights["bn2a_branch2a_scale"]) + channel(weights["bn2a_branch2a_offset"])
    expected = np.maximum(np.concatenate([instance_part, batch_part], axis=1), 0)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_instance_half_of_an_image_does_not_depend_on_the_rest_of_the_batch():
    layer = InstanceBatchNorm(8, in_name="test_in", bn_name="test_bn")
    randomise(layer)
    x = images(batch=4, channels=8, size=5)
    alone = layer(paddle.to_tensor(x[:1])).numpy()
    together = layer(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(together[:1, :4], alone[:, :4], rtol=1e-5, atol=1e-5)
    assert not np.allclose(together[:1, 4:], alone[:, 4:], atol=1e-3)  # the batch-norm half does


def test_exported_model_embeds_as_the_program(tmp_path):
    executed, exported = exported_features("ResNet50_IBN_a", tmp_path / "exported")
    assert executed.shape == (2, 2048) and np.isfinite(executed).all()
    np.testing.assert_allclose(exported, executed, rtol=1e-4, atol=1e-5 * np.abs(executed).max())
