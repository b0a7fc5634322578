"""tripletloss and batchhardtripletloss against numpy loops, eagerly and in a static Program."""
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import (SHAPES, assert_gradient, assert_shuffle_invariant, np_batch_hard, np_triplet, pk_labels,
                         tensor, triplet_labels, value)
from paddle_modes import static_loss_step

from losses.tripletloss import TripletParams, batch_hard_tripletloss, tripletloss
from utility.errors import UserError

DEFAULTS = asdict(TripletParams())


@pytest.mark.parametrize("triplets,dim", [(2, 4), (4, 16), (5, 4)])
@pytest.mark.parametrize("margin", [0.1, 0.5, 1.5])
def test_tripletloss_matches_reference(triplets, dim, margin):
    rng = np.random.default_rng(triplets * 10 + dim)
    features = rng.normal(size=(3 * triplets, dim))
    labels = triplet_labels(triplets, rng)
    loss = tripletloss(tensor(features), paddle.to_tensor(labels), margin=margin)
    assert value(loss) == pytest.approx(np_triplet(features, margin=margin), rel=1e-9, abs=1e-12)
    assert value(tripletloss(tensor(features), margin=margin)) == pytest.approx(value(loss))


@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_batch_hard_matches_reference(classes, per_class, dim, margin):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    features, labels = rng.normal(size=(classes * per_class, dim)), pk_labels(classes, per_class)
    loss = batch_hard_tripletloss(tensor(features), paddle.to_tensor(labels), margin=margin)
    assert value(loss) == pytest.approx(np_batch_hard(features, labels, margin=margin), rel=1e-9)


def test_batch_hard_reference_is_not_trivially_zero():
    # Guard for the test above: with these inputs the hinge is active.
    features, labels = np.random.default_rng(0).normal(size=(8, 4)), pk_labels(4, 2)
    assert np_batch_hard(features, labels, margin=0.1) > 0.1


def test_tripletloss_gradient_matches_finite_differences():
    labels = triplet_labels(3, np.random.default_rng(0))
    features = np.random.default_rng(4).normal(size=(len(labels), 4))
    assert_gradient(lambda f: tripletloss(f, margin=0.5), lambda f: np_triplet(f, margin=0.5), features)


def test_batch_hard_gradient_matches_finite_differences():
    labels = pk_labels(3, 2)
    features = np.random.default_rng(4).normal(size=(len(labels), 4))
    y = paddle.to_tensor(labels)
    assert_gradient(lambda f: batch_hard_tripletloss(f, y, margin=0.5),
                    lambda f: np_batch_hard(f, labels, margin=0.5), features)


@pytest.mark.parametrize("per_class", [2, 4])
def test_batch_hard_shuffled_batch_gives_the_pk_loss(per_class):
    rng = np.random.default_rng(per_class)
    features, labels = rng.normal(size=(4 * per_class, 16)), pk_labels(4, per_class)
    assert_shuffle_invariant(
        lambda f, y, order: value(batch_hard_tripletloss(tensor(f), paddle.to_tensor(y), margin=0.3)),
        features, labels, rng)


def test_batch_hard_uneven_classes_follow_the_labels():
    # Not a P x K batch: classes of 3, 2 and 4 images, interleaved.
    labels = np.array([5, 9, 5, 2, 9, 2, 5, 2, 2])
    features = np.random.default_rng(8).normal(size=(len(labels), 4))
    loss = batch_hard_tripletloss(tensor(features), paddle.to_tensor(labels), margin=0.2)
    assert value(loss) == pytest.approx(np_batch_hard(features, labels, margin=0.2))


@pytest.mark.parametrize("loss_fn,labels,message", [
    (lambda f, y: batch_hard_tripletloss(f, y, **DEFAULTS), [0, 1, 2, 3], "class 0 has a single image"),
    (lambda f, y: tripletloss(f, y, **DEFAULTS), [0, 1, 2], "triplet 0"),
    (lambda f, y: tripletloss(f, y, **DEFAULTS), [0, 0, 0, 1, 1, 2], "triplet 0"),
])
def test_bad_batch_raises_eagerly(loss_fn, labels, message):
    with pytest.raises(UserError, match=message):
        loss_fn(paddle.randn([len(labels), 4]), paddle.to_tensor(np.array(labels)))


@pytest.mark.parametrize("name,labels,reference", [
    ("tripletloss", np.array([0, 0, 1, 2, 2, 1, 3, 3, 0]), lambda e, y: np_triplet(e, **DEFAULTS)),
    ("batchhardtripletloss", np.array([2, 0, 1, 0, 2, 1, 0, 1]), lambda e, y: np_batch_hard(e, y, **DEFAULTS)),
], ids=["tripletloss", "batchhardtripletloss"])
def test_static_program_trains_one_step(name, labels, reference):
    inputs = np.random.default_rng(11).normal(size=(len(labels), 5)).astype("float32")
    first, embedding, _, _ = static_loss_step(name, labels, inputs)
    assert first == pytest.approx(reference(embedding, labels), rel=1e-4, abs=1e-6)
    assert paddle.in_dynamic_mode()
