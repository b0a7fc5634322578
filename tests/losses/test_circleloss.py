"""circleloss against a numpy loop of the paper's per-anchor form (PML's CircleLoss), eagerly and in a static
Program."""
import math
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import SHAPES, assert_gradient, assert_shuffle_invariant, np_circle, pk_labels, tensor, value
from paddle_modes import assert_static_step_matches

import losses
from losses.circleloss import CircleParams, circleloss
from utility.errors import UserError

DEFAULTS = asdict(CircleParams())


def test_defaults_are_the_papers():
    assert DEFAULTS == dict(margin=0.4, gamma=80.0)


@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
def test_matches_reference_at_the_defaults(classes, per_class, dim):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    features, labels = rng.normal(size=(classes * per_class, dim)), pk_labels(classes, per_class)
    loss = losses.get("circleloss").build_loss(dim, classes)(tensor(features), paddle.to_tensor(labels))
    reference = np_circle(features, labels, **DEFAULTS)
    assert reference > 1.0
    assert value(loss) == pytest.approx(reference, rel=1e-9)


def test_a_symmetric_batch_by_hand():
    # Unit vectors at angles 0, pi/3 (class 0) and pi, 4 pi/3 (class 1): every anchor has one positive at
    # similarity 0.5 and negatives at -1 and -0.5. With m 0.6, gamma 4: a_p = 1.6 - 0.5 = 1.1,
    # a_n = [-1 + 0.6]_+ = 0 and [-0.5 + 0.6]_+ = 0.1, and every anchor's loss is
    # log(1 + exp(-4 * 1.1 * (0.5 - 0.4)) * (exp(0) + exp(4 * 0.1 * (-0.5 - 0.6)))).
    angles = np.array([0.0, math.pi / 3, math.pi, 4 * math.pi / 3])
    features = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 1, 1])
    settings = dict(margin=0.6, gamma=4.0)
    expected = math.log1p(math.exp(-4 * 1.1 * 0.1) * (1 + math.exp(4 * 0.1 * -1.1)))
    assert value(circleloss(tensor(features), paddle.to_tensor(labels), **settings)) == pytest.approx(expected,
                                                                                                     rel=1e-9)
    assert np_circle(features, labels, **settings) == pytest.approx(expected, rel=1e-12)


def test_is_finite_at_large_scales():
    features, labels = np.random.default_rng(3).normal(size=(8, 3)), pk_labels(2, 4)
    settings = dict(margin=0.4, gamma=5000.0)  # exp() of gamma-scaled logits overflows float32 and float64
    f = paddle.to_tensor(features.astype("float32"), stop_gradient=False)
    loss = circleloss(f, paddle.to_tensor(labels), **settings)
    loss.backward()
    assert np.isfinite(value(loss)) and np.all(np.isfinite(f.grad.numpy()))
    assert value(loss) == pytest.approx(np_circle(features, labels, **settings), rel=1e-4)


def test_gradient_matches_finite_differences():
    labels = pk_labels(3, 3)
    features = np.random.default_rng(11).normal(size=(9, 4))
    y = paddle.to_tensor(labels)
    settings = dict(margin=0.3, gamma=6.0)
    assert_gradient(lambda f: circleloss(f, y, **settings),
                    lambda f: np_circle(f, labels, **settings, weights_at=features), features)


@pytest.mark.parametrize("per_class", [2, 4])
def test_shuffled_batch_gives_the_pk_loss(per_class):
    rng = np.random.default_rng(per_class)
    labels = pk_labels(4, per_class, spread=False)
    features = rng.normal(size=(len(labels), 16))
    assert_shuffle_invariant(
        lambda f, y, order: value(circleloss(tensor(f), paddle.to_tensor(y), **DEFAULTS)), features, labels, rng)


@pytest.mark.parametrize("labels,message", [([0, 1, 2, 2], "circleloss: class 0 has a single image"),
                                            ([2, 2, 2], "no anchor has a negative")])
def test_bad_batch_raises_eagerly(labels, message):
    with pytest.raises(UserError, match=message):
        circleloss(paddle.randn([len(labels), 4]), paddle.to_tensor(np.array(labels)), **DEFAULTS)


def test_static_program_trains_one_step():
    assert_static_step_matches("circleloss", np.array([3, 1, 3, 1, 2, 2]), 15,
                               lambda embedding, labels: np_circle(embedding, labels, **DEFAULTS))
