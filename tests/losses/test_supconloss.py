"""supconloss against a numpy loop of the paper's L_out (PML's SupConLoss), eagerly and in a static Program."""
import math
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import SHAPES, assert_gradient, assert_shuffle_invariant, np_supcon, pk_labels, tensor, value
from paddle_modes import assert_static_step_matches

import losses
from losses.supconloss import SupConParams, supconloss
from utility.errors import UserError

DEFAULTS = asdict(SupConParams())


def test_default_is_the_papers():
    assert DEFAULTS == dict(temperature=0.1)


@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
def test_matches_reference_at_the_defaults(classes, per_class, dim):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    features, labels = rng.normal(size=(classes * per_class, dim)), pk_labels(classes, per_class)
    loss = losses.get("supconloss").build_loss(dim, classes)(tensor(features), paddle.to_tensor(labels))
    reference = np_supcon(features, labels, **DEFAULTS)
    assert reference > 0.5
    assert value(loss) == pytest.approx(reference, rel=1e-9)


def test_a_symmetric_batch_by_hand():
    # Unit vectors at angles 0, pi/3 (class 0) and pi, 4 pi/3 (class 1): every anchor has one positive at
    # similarity 0.5 and negatives at -1 and -0.5, so every L_i = -log(e^(0.5/t) / (e^(0.5/t) + e^(-1/t) + e^(-0.5/t))).
    angles = np.array([0.0, math.pi / 3, math.pi, 4 * math.pi / 3])
    features = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 1, 1])
    t = 0.5
    expected = -math.log(math.exp(0.5 / t) / (math.exp(0.5 / t) + math.exp(-1 / t) + math.exp(-0.5 / t)))
    assert value(supconloss(tensor(features), paddle.to_tensor(labels), temperature=t)) == pytest.approx(expected,
                                                                                                        rel=1e-9)
    assert np_supcon(features, labels, temperature=t) == pytest.approx(expected, rel=1e-12)


def test_anchors_without_a_positive_add_nothing():
    # Classes 4 and 6 have one image each: their anchors have no positive and are not in the mean.
    rng = np.random.default_rng(5)
    features, labels = rng.normal(size=(6, 4)), np.array([0, 0, 4, 1, 1, 6])
    loss = value(supconloss(tensor(features), paddle.to_tensor(labels), **DEFAULTS))
    assert loss == pytest.approx(np_supcon(features, labels, **DEFAULTS), rel=1e-9)
    # The mean is over the 4 anchors with a positive: counting the lonely two as zeros would give 4/6 of it.
    four_anchors = np_supcon(features, labels, **DEFAULTS)
    assert loss != pytest.approx(four_anchors * 4 / 6, rel=1e-3)


def test_is_finite_at_a_tiny_temperature():
    features, labels = np.random.default_rng(3).normal(size=(8, 3)), pk_labels(2, 4)
    f = paddle.to_tensor(features.astype("float32"), stop_gradient=False)
    loss = supconloss(f, paddle.to_tensor(labels), temperature=1e-3)  # logits up to 1000: exp() overflows
    loss.backward()
    assert np.isfinite(value(loss)) and np.all(np.isfinite(f.grad.numpy()))
    assert value(loss) == pytest.approx(np_supcon(features, labels, temperature=1e-3), rel=1e-4)


def test_gradient_matches_finite_differences():
    labels = pk_labels(3, 3)
    features = np.random.default_rng(11).normal(size=(9, 4))
    y = paddle.to_tensor(labels)
    assert_gradient(lambda f: supconloss(f, y, temperature=0.5), lambda f: np_supcon(f, labels, temperature=0.5),
                    features)


@pytest.mark.parametrize("per_class", [2, 4])
def test_shuffled_batch_gives_the_pk_loss(per_class):
    rng = np.random.default_rng(per_class)
    labels = pk_labels(4, per_class, spread=False)
    features = rng.normal(size=(len(labels), 16))
    assert_shuffle_invariant(
        lambda f, y, order: value(supconloss(tensor(f), paddle.to_tensor(y), **DEFAULTS)), features, labels, rng)


@pytest.mark.parametrize("labels,message", [([0, 1, 2], "no two images in the batch share a class"),
                                            ([2, 2, 2], "no negative pair")])
def test_bad_batch_raises_eagerly(labels, message):
    with pytest.raises(UserError, match=message):
        supconloss(paddle.randn([len(labels), 4]), paddle.to_tensor(np.array(labels)), **DEFAULTS)


def test_static_program_trains_one_step():
    assert_static_step_matches("supconloss", np.array([3, 1, 3, 1, 2, 2]), 15,
                               lambda embedding, labels: np_supcon(embedding, labels, **DEFAULTS))
