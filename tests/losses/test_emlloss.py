"""emlloss (no settings) against a numpy loop, eagerly and in a static Program."""
import numpy as np
import paddle
import pytest
from loss_checks import (SHAPES, assert_gradient, assert_shuffle_invariant, np_eml, np_eml_biases, pk_labels, tensor,
                         value)
from paddle_modes import assert_static_step_matches

from losses.emlloss import emlloss
from utility.errors import UserError


@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
def test_emlloss_matches_reference(classes, per_class, dim):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    features, labels = rng.normal(size=(classes * per_class, dim)), pk_labels(classes, per_class)
    assert value(emlloss(tensor(features), paddle.to_tensor(labels))) == pytest.approx(np_eml(features, labels),
                                                                                      rel=1e-9)


def test_gradient_matches_finite_differences():
    labels = pk_labels(3, 4)
    features = np.random.default_rng(4).normal(size=(len(labels), 4))
    y = paddle.to_tensor(labels)
    assert_gradient(lambda f: emlloss(f, y), lambda f: np_eml(f, labels), features)


@pytest.mark.parametrize("per_class", [2, 4])
def test_shuffled_batch_gives_the_pk_loss(per_class):
    rng = np.random.default_rng(per_class)
    features, labels = rng.normal(size=(4 * per_class, 16)), pk_labels(4, per_class)
    assert_shuffle_invariant(lambda f, y, order: value(emlloss(tensor(f), paddle.to_tensor(y))), features, labels, rng)


def test_uneven_classes_follow_the_labels():
    # Not a P x K batch: classes of 3, 2 and 4 images, interleaved.
    labels = np.array([5, 9, 5, 2, 9, 2, 5, 2, 2])
    features = np.random.default_rng(8).normal(size=(len(labels), 4))
    assert value(emlloss(tensor(features), paddle.to_tensor(labels))) == pytest.approx(np_eml(features, labels),
                                                                                      rel=1e-9)


@pytest.mark.parametrize("labels,message", [([0, 0, 1, 1, 2], "class 2 has a single image"),
                                            ([4, 4, 4, 4], "no anchor has a negative")])
def test_bad_batch_raises_eagerly(labels, message):
    with pytest.raises(UserError, match=message):
        emlloss(paddle.randn([len(labels), 4]), paddle.to_tensor(np.array(labels)))


def test_emlloss_is_finite_for_large_distances():
    labels = pk_labels(3, 2)
    features = np.random.default_rng(9).normal(size=(6, 8)) * 100  # squared distances ~ 1e5, bias far above 20
    f = paddle.to_tensor(features.astype("float32"), stop_gradient=False)
    loss = emlloss(f, paddle.to_tensor(labels))
    loss.backward()
    assert np.isfinite(value(loss)) and np.all(np.isfinite(f.grad.numpy()))
    assert value(loss) == pytest.approx(np_eml(features, labels), rel=1e-4)
    # The regime where exp(bias) overflows float32 (bias > 89) is really exercised.
    assert max(np_eml_biases(features, labels)) > 89


def test_static_program_trains_one_step():
    assert_static_step_matches("emlloss", np.array([3, 1, 3, 1, 2, 2]), 11,
                               np_eml, positive=False)
