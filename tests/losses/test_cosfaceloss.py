"""cosface (CosFace) against a numpy loop: the loss of given cosines, the head with its weight, a static step."""
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import assert_gradient, np_cosface, np_normalize, tensor, value
from paddle_modes import static_loss_step

import losses
from losses.cosfaceloss import CosFaceLoss, CosFaceParams, cosface_loss


@pytest.mark.parametrize("cosine_seed", [0, 1])
@pytest.mark.parametrize("margin,scale", [(0.35, 30.0), (0.1, 5.0), (0.6, 64.0)])
def test_cosface_loss_matches_reference(cosine_seed, margin, scale):
    rng = np.random.default_rng(cosine_seed)
    cosine, labels = rng.uniform(-0.99, 0.99, size=(12, 5)), rng.integers(0, 5, size=12)
    loss = cosface_loss(tensor(cosine), paddle.to_tensor(labels), margin=margin, scale=scale)
    assert value(loss) == pytest.approx(np_cosface(cosine, labels, margin=margin, scale=scale), rel=1e-9)


@pytest.mark.parametrize("settings", [{}, dict(margin=0.2, scale=16.0)])
def test_head_matches_reference(settings):
    paddle.seed(1)
    head = losses.get("cosface").build_loss(6, 4, **settings)
    assert isinstance(head, CosFaceLoss) and head.weight.shape == [6, 4]
    rng = np.random.default_rng(2)
    embedding, labels = rng.normal(size=(8, 6)).astype("float32"), rng.integers(0, 4, size=8)
    cosine = np_normalize(embedding.astype(float)) @ np_normalize(head.weight.numpy().astype(float), axis=0)
    loss = head(paddle.to_tensor(embedding), paddle.to_tensor(labels))
    assert value(loss) == pytest.approx(np_cosface(cosine, labels, **asdict(CosFaceParams(**settings))), rel=1e-4)
    loss.backward()
    assert np.abs(head.weight.grad.numpy()).sum() > 0


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(13)
    cosine, labels = rng.uniform(-0.95, 0.95, size=(6, 4)), rng.integers(0, 4, size=6)
    y = paddle.to_tensor(labels)
    assert_gradient(lambda c: cosface_loss(c, y, margin=0.35, scale=5.0),
                    lambda c: np_cosface(c, labels, margin=0.35, scale=5.0), cosine)


def test_static_program_trains_one_step():
    labels = np.array([0, 2, 1, 1, 0, 2])
    inputs = np.random.default_rng(15).normal(size=(len(labels), 5)).astype("float32")
    _, _, _, parameters = static_loss_step("cosface", labels, inputs)
    assert "cosface_weights" in parameters
    assert paddle.in_dynamic_mode()
