"""arcmargin (ArcFace) against a numpy loop: the loss of given cosines, the head with its weight, a static step."""
import math

import numpy as np
import paddle
import pytest
from loss_checks import assert_gradient, np_arcmargin, np_normalize, tensor, value
from paddle_modes import static_loss_step

import losses
from losses.arcmarginloss import arcmargin_loss


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("margin,scale", [(0.15, 80.0), (0.5, 10.0), (1.2, 4.0)])
def test_arcmargin_loss_matches_reference(easy_margin, margin, scale):
    rng = np.random.default_rng(int(margin * 100))
    cosine = rng.uniform(-0.99, 0.99, size=(12, 5))
    labels = rng.integers(0, 5, size=12)
    settings = dict(margin=margin, scale=scale, easy_margin=easy_margin)
    loss = arcmargin_loss(tensor(cosine), paddle.to_tensor(labels), **settings)
    assert value(loss) == pytest.approx(np_arcmargin(cosine, labels, **settings), rel=1e-6)


def test_fallback_branch_is_exercised():
    # cos(theta) below cos(pi - m): theta + m passes pi, so the fallback logit must be used.
    settings = dict(margin=1.2, scale=3.0, easy_margin=False)
    cosine = np.array([[-0.9, 0.1, 0.2], [0.8, -0.5, 0.0]])
    labels = np.array([0, 0])
    assert -0.9 < math.cos(math.pi - settings["margin"])
    loss = arcmargin_loss(tensor(cosine), paddle.to_tensor(labels), **settings)
    assert value(loss) == pytest.approx(np_arcmargin(cosine, labels, **settings), rel=1e-9)


def test_head_built_with_settings_matches_reference():
    paddle.seed(1)
    head = losses.get("arcmargin").build_loss(6, 4, margin=0.3, scale=16.0)
    assert isinstance(head, paddle.nn.Layer)
    assert head.weight.shape == [6, 4]
    rng = np.random.default_rng(2)
    embedding = rng.normal(size=(8, 6)).astype("float32")
    labels = rng.integers(0, 4, size=8)
    cosine = np_normalize(embedding.astype(float)) @ np_normalize(head.weight.numpy().astype(float), axis=0)
    loss = head(paddle.to_tensor(embedding), paddle.to_tensor(labels))
    assert value(loss) == pytest.approx(np_arcmargin(cosine, labels, margin=0.3, scale=16.0, easy_margin=False),
                                        rel=1e-4)
    loss.backward()
    assert np.abs(head.weight.grad.numpy()).sum() > 0


@pytest.mark.parametrize("easy_margin", [False, True])
def test_gradient_matches_finite_differences(easy_margin):
    rng = np.random.default_rng(6)
    cosine = rng.uniform(-0.95, 0.95, size=(6, 4))
    labels = rng.integers(0, 4, size=6)
    y = paddle.to_tensor(labels)
    settings = dict(margin=0.4, scale=5.0, easy_margin=easy_margin)
    assert_gradient(lambda c: arcmargin_loss(c, y, **settings), lambda c: np_arcmargin(c, labels, **settings), cosine)


def test_static_program_trains_one_step():
    labels = np.array([0, 2, 1, 1, 0, 2])
    inputs = np.random.default_rng(11).normal(size=(len(labels), 5)).astype("float32")
    _, _, _, parameters = static_loss_step("arcmargin", labels, inputs)
    assert "arcmargin_weights" in parameters
    assert paddle.in_dynamic_mode()
