"""quadrupletloss against numpy loops, eagerly and in a static Program."""
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import SHAPES, assert_gradient, assert_shuffle_invariant, np_quadruplet, pk_labels, tensor, value
from paddle_modes import assert_static_step_matches

from losses.quadrupletloss import quadrupletloss
from losses.tripletloss import TripletParams
from utility.errors import UserError

DEFAULTS = asdict(TripletParams())  # --margin is shared with the triplet losses


@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_quadrupletloss_matches_reference(classes, per_class, dim, margin):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    features, labels = rng.normal(size=(classes * per_class, dim)), pk_labels(classes, per_class)
    loss = quadrupletloss(tensor(features), paddle.to_tensor(labels), margin=margin)
    assert value(loss) == pytest.approx(np_quadruplet(features, labels, margin=margin), rel=1e-9)


def test_reference_is_not_trivially_zero():
    # Guard for the test above: with these inputs the hinge is active.
    features, labels = np.random.default_rng(0).normal(size=(8, 4)), pk_labels(4, 2)
    assert np_quadruplet(features, labels, margin=0.1) > 0.1


def test_gradient_matches_finite_differences():
    labels = pk_labels(2, 4)
    features = np.random.default_rng(4).normal(size=(len(labels), 4))
    y = paddle.to_tensor(labels)
    assert_gradient(lambda f: quadrupletloss(f, y, margin=0.5), lambda f: np_quadruplet(f, labels, margin=0.5),
                    features)


@pytest.mark.parametrize("per_class", [2, 4])
def test_shuffled_batch_gives_the_pk_loss(per_class):
    rng = np.random.default_rng(per_class)
    features, labels = rng.normal(size=(4 * per_class, 16)), pk_labels(4, per_class)
    assert_shuffle_invariant(lambda f, y, order: value(quadrupletloss(tensor(f), paddle.to_tensor(y), margin=0.3)),
                             features, labels, rng)


def test_uneven_classes_follow_the_labels():
    # Not a P x K batch: classes of 3, 2 and 4 images, interleaved.
    labels = np.array([5, 9, 5, 2, 9, 2, 5, 2, 2])
    features = np.random.default_rng(8).normal(size=(len(labels), 4))
    loss = quadrupletloss(tensor(features), paddle.to_tensor(labels), margin=0.2)
    assert value(loss) == pytest.approx(np_quadruplet(features, labels, margin=0.2))


@pytest.mark.parametrize("labels,message", [([0, 1, 2, 3], "no positive pair"), ([1, 1, 1, 1], "no negative pair")])
def test_bad_batch_raises_eagerly(labels, message):
    with pytest.raises(UserError, match=message):
        quadrupletloss(paddle.randn([len(labels), 4]), paddle.to_tensor(np.array(labels)), **DEFAULTS)


def test_static_program_trains_one_step():
    assert_static_step_matches("quadrupletloss", pk_labels(2, 4), 11,
                               lambda embedding, labels: np_quadruplet(embedding, labels, **DEFAULTS), positive=False)
