"""softtripleloss against a numpy loop of the paper's formulas (the authors' regulariser): values, gradients into
the embedding and the centres, a static step."""
import math
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import assert_checkpoint_keeps, assert_gradient, default_dtype, np_softtriple, tensor, value
from numeric import numeric_gradient
from paddle_modes import static_loss_step

import losses
from losses.softtripleloss import SoftTripleParams, center_spread

DEFAULTS = asdict(SoftTripleParams())


def head(dim, num_classes, weight=None, **settings):
    """The loss built by the registry with float64 centres, set to `weight` when given."""
    with default_dtype("float64"):
        layer = losses.get("softtripleloss").build_loss(dim, num_classes, **settings)
    if weight is not None:
        layer.weight.set_value(weight)
    return layer


def test_defaults_are_the_papers():
    assert DEFAULTS == dict(centers=10, scale=20.0, gamma=0.1, tau=0.2, margin=0.01)
    assert head(6, 4).weight.shape == [6, 40]


@pytest.mark.parametrize("settings", [DEFAULTS, dict(centers=3, scale=8.0, gamma=0.5, tau=0.7, margin=0.2),
                                      dict(centers=1, scale=10.0, gamma=0.1, tau=0.2, margin=0.1)])
def test_matches_reference(settings):
    rng = np.random.default_rng(settings["centers"])
    features, weight = rng.normal(size=(10, 6)), rng.normal(size=(6, 4 * settings["centers"]))
    labels = rng.integers(0, 4, size=10)
    loss = head(6, 4, weight, **settings)(tensor(features), paddle.to_tensor(labels))
    reference = np_softtriple(features, labels, weight, **settings)
    assert reference > 0.5
    assert value(loss) == pytest.approx(reference, rel=1e-9)


def test_regulariser_by_hand():
    # One class, K 3 centres at angles 0, pi/2, pi in a plane: pairs (0, 1), (0, 2), (1, 2) at cosines 0, -1, 0:
    # (2 sqrt(2 + e) + sqrt(4 + e)) / (1 * 3 * 2).
    weight = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    expected = (2 * math.sqrt(2 + 1e-5) + math.sqrt(4 + 1e-5)) / 6
    assert center_spread(paddle.to_tensor(weight), 1, 3).item() == pytest.approx(expected, rel=1e-12)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(6)
    features, weight, labels = rng.normal(size=(6, 4)), rng.normal(size=(4, 9)), np.array([0, 2, 1, 1, 0, 2])
    settings = dict(centers=3, scale=5.0, gamma=0.3, tau=0.5, margin=0.1)
    y = paddle.to_tensor(labels)
    layer = head(4, 3, weight, **settings)
    assert_gradient(lambda f: layer(f, y), lambda f: np_softtriple(f, labels, weight, **settings), features)
    layer.clear_gradients()
    layer(paddle.to_tensor(features), y).backward()
    numeric = numeric_gradient(lambda w: np_softtriple(features, labels, w, **settings), weight)
    np.testing.assert_allclose(layer.weight.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


def test_shuffled_batch_gives_the_same_loss():
    rng = np.random.default_rng(2)
    features, labels = rng.normal(size=(9, 6)), rng.integers(0, 3, size=9)
    layer = head(6, 3, rng.normal(size=(6, 30)))
    order = rng.permutation(9)
    in_order = value(layer(tensor(features), paddle.to_tensor(labels)))
    assert in_order > 0
    assert value(layer(tensor(features[order]), paddle.to_tensor(labels[order]))) == pytest.approx(in_order, rel=1e-12)


def test_static_program_trains_one_step():
    labels = np.array([0, 2, 1, 1, 0, 2])
    inputs = np.random.default_rng(11).normal(size=(len(labels), 5)).astype("float32")
    first, _, _, parameters = static_loss_step("softtripleloss", labels, inputs)
    assert first > 0 and "softtripleloss_centers" in parameters
    assert paddle.in_dynamic_mode()


def test_centers_are_saved_and_restored_by_checkpoints(tmp_path):
    assert_checkpoint_keeps("softtripleloss", "softtripleloss_centers", tmp_path)
