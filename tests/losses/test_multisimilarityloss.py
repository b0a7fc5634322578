"""multisimilarityloss against a numpy loop, eagerly and in a static Program."""
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import SHAPES, assert_gradient, assert_shuffle_invariant, np_ms, pk_labels, tensor, value
from paddle_modes import assert_static_step_matches

import losses
from losses.multisimilarityloss import MultiSimilarityParams, multisimilarityloss
from utility.errors import UserError

DEFAULTS = asdict(MultiSimilarityParams())


@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
def test_matches_reference_at_the_defaults(classes, per_class, dim):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    features, labels = rng.normal(size=(classes * per_class, dim)), pk_labels(classes, per_class)
    loss = losses.get("multisimilarityloss").build_loss(dim, classes)(tensor(features), paddle.to_tensor(labels))
    assert value(loss) == pytest.approx(np_ms(features, labels, **DEFAULTS), rel=1e-4)


@pytest.mark.parametrize("settings", [dict(alpha=1.0, beta=10.0, base=0.3, epsilon=0.0),
                                      dict(alpha=4.0, beta=80.0, base=0.7, epsilon=0.5)])
def test_other_settings(settings):
    features, labels = np.random.default_rng(2).normal(size=(12, 6)), pk_labels(4, 3)
    loss = multisimilarityloss(tensor(features), paddle.to_tensor(labels), **settings)
    assert value(loss) == pytest.approx(np_ms(features, labels, **settings), rel=1e-9)
    built = losses.get("multisimilarityloss").build_loss(6, 4, **settings)
    assert value(built(tensor(features), paddle.to_tensor(labels))) == pytest.approx(value(loss))


def test_reference_is_not_trivially_zero():
    # Guard for the tests above: at the defaults pairs are mined and cost something.
    features, labels = np.random.default_rng(0).normal(size=(12, 4)), pk_labels(3, 4)
    assert np_ms(features, labels, **DEFAULTS) > 0.05


def test_skips_anchors_without_mined_pairs():
    # Two tight, far-apart classes: no negative is more similar than the least similar positive
    # minus epsilon, so nothing is mined and the loss is exactly 0 (not log 2 terms).
    features = np.array([[1.0, 0.0], [0.99, 0.05], [-1.0, 0.0], [-0.99, 0.05]])
    labels = np.array([0, 0, 1, 1])
    assert value(multisimilarityloss(tensor(features), paddle.to_tensor(labels), **DEFAULTS)) == 0.0
    assert np_ms(features, labels, **DEFAULTS) == 0.0


def test_is_finite_at_large_scales():
    # beta * (S - lambda) up to 500 * 0.5 = 250: exp() of that overflows float32 (and of 1000, float64).
    features, labels = np.random.default_rng(3).normal(size=(8, 3)), pk_labels(2, 4)
    settings = asdict(MultiSimilarityParams(alpha=40.0, beta=2000.0))
    f = paddle.to_tensor(features.astype("float32"), stop_gradient=False)
    loss = multisimilarityloss(f, paddle.to_tensor(labels), **settings)
    loss.backward()
    assert np.isfinite(value(loss)) and np.all(np.isfinite(f.grad.numpy()))
    assert value(loss) == pytest.approx(np_ms(features, labels, **settings), rel=1e-4)


def test_gradient_matches_finite_differences():
    labels = pk_labels(3, 4)
    features = np.random.default_rng(11).normal(size=(12, 4))
    y = paddle.to_tensor(labels)
    settings = dict(alpha=2.0, beta=10.0, base=0.5, epsilon=0.1)
    assert_gradient(lambda f: multisimilarityloss(f, y, **settings), lambda f: np_ms(f, labels, **settings), features)


@pytest.mark.parametrize("per_class", [2, 4])
def test_shuffled_batch_gives_the_pk_loss(per_class):
    rng = np.random.default_rng(per_class)
    labels = pk_labels(4, per_class, spread=False)
    features = rng.normal(size=(len(labels), 16))
    assert_shuffle_invariant(
        lambda f, y, order: value(multisimilarityloss(tensor(f), paddle.to_tensor(y), **DEFAULTS)),
        features, labels, rng)


def test_uneven_classes_follow_the_labels():
    # Not a P x K batch: classes of 3, 2 and 4 images, interleaved.
    labels = np.array([2, 1, 2, 0, 1, 0, 2, 0, 0])
    features = np.random.default_rng(14).normal(size=(9, 4))
    loss = multisimilarityloss(tensor(features), paddle.to_tensor(labels), **DEFAULTS)
    assert value(loss) == pytest.approx(np_ms(features, labels, **DEFAULTS), rel=1e-9)


@pytest.mark.parametrize("labels,message", [([0, 1, 2, 2], "multisimilarityloss: class 0 has a single image"),
                                            ([2, 2, 2], "no anchor has a negative")])
def test_bad_batch_raises_eagerly(labels, message):
    with pytest.raises(UserError, match=message):
        multisimilarityloss(paddle.randn([len(labels), 4]), paddle.to_tensor(np.array(labels)), **DEFAULTS)


def test_static_program_trains_one_step():
    assert_static_step_matches("multisimilarityloss", np.array([3, 1, 3, 1, 2, 2]), 15,
                               lambda embedding, labels: np_ms(embedding, labels, **DEFAULTS))
