"""subcenterarcface against a numpy loop: the nearest sub-centre per class, then ArcFace; gradients into the
embedding and the sub-centres; a static step."""
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import (assert_checkpoint_keeps, assert_gradient, default_dtype, np_arcmargin, np_normalize,
                         np_subcenter_arcface, tensor, value)
from numeric import numeric_gradient
from paddle_modes import static_loss_step

import losses
from losses.arcmarginloss import ArcMarginParams
from losses.subcenterarcface import SubCenterArcFaceParams

DEFAULTS = asdict(SubCenterArcFaceParams())


def np_cosines(features, weight):
    return np_normalize(features) @ np_normalize(weight, axis=0)


def head(dim, num_classes, weight=None, **settings):
    """The loss built by the registry with a float64 weight, set to `weight` when given."""
    with default_dtype("float64"):
        layer = losses.get("subcenterarcface").build_loss(dim, num_classes, **settings)
    if weight is not None:
        layer.weight.set_value(weight)
    return layer


def test_defaults_are_three_sub_centres_with_arcmargins_margin_and_scale():
    arc = ArcMarginParams()
    assert DEFAULTS == dict(sub_centers=3, scale=arc.scale, margin=arc.margin)
    assert head(6, 4).weight.shape == [6, 12]


@pytest.mark.parametrize("sub_centers,margin,scale", [(3, 0.15, 80.0), (2, 0.5, 16.0), (1, 0.3, 30.0)])
def test_matches_reference(sub_centers, margin, scale):
    rng = np.random.default_rng(sub_centers)
    features, weight = rng.normal(size=(10, 6)), rng.normal(size=(6, 4 * sub_centers))
    labels = rng.integers(0, 4, size=10)
    settings = dict(sub_centers=sub_centers, margin=margin, scale=scale)
    loss = head(6, 4, weight, **settings)(tensor(features), paddle.to_tensor(labels))
    reference = np_subcenter_arcface(features, labels, weight, **settings)
    assert reference > 0.5
    assert value(loss) == pytest.approx(reference, rel=1e-9)


def test_the_nearest_sub_centre_counts():
    # Class 0's second sub-centre is the row itself, the others point away: the loss is ArcFace's with cos 1
    # for class 0, whatever the other sub-centres are.
    row = np.array([[1.0, 0.0, 0.0]])
    weight = np.zeros((3, 6))
    weight[:, 0], weight[:, 1], weight[:, 2] = [-1, 0, 0], [1, 0, 0], [0, -1, 0]  # class 0
    weight[:, 3], weight[:, 4], weight[:, 5] = [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0]  # class 1: nearest cos 0.6
    loss = head(3, 2, weight)(tensor(row), paddle.to_tensor(np.array([0])))
    expected = np_arcmargin(np.array([[1.0, 0.6]]), np.array([0]), margin=DEFAULTS["margin"],
                            scale=DEFAULTS["scale"], easy_margin=False)
    assert value(loss) == pytest.approx(expected, rel=1e-6)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(6)
    features, weight, labels = rng.normal(size=(6, 4)), rng.normal(size=(4, 9)), np.array([0, 2, 1, 1, 0, 2])
    settings = dict(sub_centers=3, margin=0.4, scale=5.0)
    y = paddle.to_tensor(labels)
    layer = head(4, 3, weight, **settings)
    assert_gradient(lambda f: layer(f, y), lambda f: np_subcenter_arcface(f, labels, weight, **settings), features)
    layer.clear_gradients()
    layer(paddle.to_tensor(features), y).backward()
    numeric = numeric_gradient(lambda w: np_subcenter_arcface(features, labels, w, **settings), weight)
    np.testing.assert_allclose(layer.weight.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)
    # For one row, only the nearest sub-centre of each class gets a gradient: 3 of the 9 columns.
    layer.clear_gradients()
    layer(paddle.to_tensor(features[:1]), y[:1]).backward()
    moved = np.abs(layer.weight.grad.numpy()).sum(axis=0) > 0
    nearest = [3 * c + int(np.argmax(np_cosines(features[:1], weight)[0, 3 * c:3 * c + 3])) for c in range(3)]
    assert np.flatnonzero(moved).tolist() == nearest


def test_shuffled_batch_gives_the_same_loss():
    rng = np.random.default_rng(2)
    features, labels = rng.normal(size=(9, 6)), rng.integers(0, 3, size=9)
    layer = head(6, 3, rng.normal(size=(6, 9)))
    order = rng.permutation(9)
    in_order = value(layer(tensor(features), paddle.to_tensor(labels)))
    assert in_order > 0
    assert value(layer(tensor(features[order]), paddle.to_tensor(labels[order]))) == pytest.approx(in_order, rel=1e-12)


def test_static_program_trains_one_step():
    labels = np.array([0, 2, 1, 1, 0, 2])
    inputs = np.random.default_rng(11).normal(size=(len(labels), 5)).astype("float32")
    first, _, _, parameters = static_loss_step("subcenterarcface", labels, inputs)
    assert first > 0 and "subcenterarcface_weights" in parameters
    assert paddle.in_dynamic_mode()


def test_weights_are_saved_and_restored_by_checkpoints(tmp_path):
    assert_checkpoint_keeps("subcenterarcface", "subcenterarcface_weights", tmp_path)
