"""SE_ResNet50 (models/se_resnet.py): the gate's width and place in every bottleneck. Names, shapes and the
parameter count: tests/models/test_builders.py; the gate itself: test_squeeze_excitation_matches_numpy.

No export test of its own: its operations are those of ResNet50 and SE_ResNeXt50_32x4d, whose exports are
tested (tests/scripts/test_train.py evaluates SE_ResNeXt50_32x4d through its export), and an export of a
ResNet-50-sized network costs 3-7 s here (Paddle Inference's optimisation passes)."""
import numpy as np
import paddle
import pytest

from models import build_model


@pytest.fixture(scope="module")
def network():
    return build_model("SE_ResNet50")


def test_every_bottleneck_has_a_gate_with_reduction_16(network):
    shapes = {p.name: p.shape for p in network.parameters()}
    gates = 0
    for stage, depth, channels in ((2, 3, 256), (3, 4, 512), (4, 6, 1024), (5, 3, 2048)):
        for block in (f"res{stage}{chr(ord('a') + i)}" for i in range(depth)):
            assert shapes[f"fc_{block}_sqz_weights"] == [channels, channels // 16]
            assert shapes[f"fc_{block}_exc_weights"] == [channels // 16, channels]
            gates += 1
    assert gates == 16 == sum(name.endswith("_sqz_weights") for name in shapes)


def test_gate_rescales_the_residual_branch_before_the_addition(network):
    """Block res3a (projection shortcut, stride 2), numpy after the convolutions:
    relu(branch * sigmoid(W_exc relu(W_sqz mean(branch) + b) + b) + shortcut)."""
    block = network.backbone.blocks[3]
    rng = np.random.default_rng(0)
    for p in block.se.parameters():
        p.set_value(rng.normal(0, 0.2, p.shape).astype("float32"))
    block.eval()
    x = paddle.to_tensor(rng.random((2, 256, 8, 8), dtype=np.float32))
    branch = block.conv_c(block.conv_b(block.conv_a(x))).numpy()
    short = block.shortcut(x).numpy()
    w = {p.name: p.numpy() for p in block.se.parameters()}
    hidden = np.maximum(branch.mean(axis=(2, 3)) @ w["fc_res3a_sqz_weights"] + w["fc_res3a_sqz_offset"], 0)
    gate = 1 / (1 + np.exp(-(hidden @ w["fc_res3a_exc_weights"] + w["fc_res3a_exc_offset"])))
    expected = np.maximum(branch * gate[:, :, None, None] + short, 0)
    np.testing.assert_allclose(block(x).numpy(), expected, rtol=1e-4, atol=1e-4)

