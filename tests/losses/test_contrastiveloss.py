"""contrastiveloss against a numpy loop of PML's ContrastiveLoss, eagerly and in a static Program."""
import math
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import SHAPES, assert_gradient, assert_shuffle_invariant, np_contrastive, pk_labels, tensor, value
from paddle_modes import assert_static_step_matches

import losses
from losses.contrastiveloss import ContrastiveParams, contrastiveloss
from utility.errors import UserError

DEFAULTS = asdict(ContrastiveParams())


def test_defaults_are_pmls():
    assert DEFAULTS == dict(positive_margin=0.0, negative_margin=1.0)


@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
def test_matches_reference_at_the_defaults(classes, per_class, dim):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    features, labels = rng.normal(size=(classes * per_class, dim)), pk_labels(classes, per_class)
    loss = losses.get("contrastiveloss").build_loss(dim, classes)(tensor(features), paddle.to_tensor(labels))
    reference = np_contrastive(features, labels, **DEFAULTS)
    assert reference > 0.1
    assert value(loss) == pytest.approx(reference, rel=1e-6)


def test_averages_only_the_nonzero_pairs():
    # Unit vectors at angles 0 and 0.2 (class 0) and twice 1.2 (class 1); chords 2 sin(angle / 2).
    # Positives: class 0's pair costs 2 sin 0.1; class 1's coinciding rows cost 0 and are not counted.
    # Negatives: angle 1.2 from 0 is beyond the margin (2 sin 0.6 > 1, cost 0, not counted); from 0.2
    # each of the 4 ordered pairs costs 1 - 2 sin 0.5. So the loss is the sum of those two costs.
    angles = np.array([0.0, 0.2, 1.2, 1.2])
    features = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 1, 1])
    expected = 2 * math.sin(0.1) + 1 - 2 * math.sin(0.5)
    assert np_contrastive(features, labels, **DEFAULTS) == pytest.approx(expected, rel=1e-12)
    loss = contrastiveloss(tensor(features), paddle.to_tensor(labels), **DEFAULTS)
    assert value(loss) == pytest.approx(expected, rel=1e-9)
    separated = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, -1.0], [0.0, -1.0]])  # every hinge is 0
    assert value(contrastiveloss(tensor(separated), paddle.to_tensor(labels), **DEFAULTS)) == 0.0


def test_other_settings_and_references():
    rng = np.random.default_rng(2)
    features, labels = rng.normal(size=(12, 6)), pk_labels(4, 3)
    references, reference_labels = rng.normal(size=(5, 6)), np.array([3, 10, -1, 17, 99])
    settings = dict(positive_margin=0.3, negative_margin=1.3)
    loss = contrastiveloss(tensor(features), paddle.to_tensor(labels), paddle.to_tensor(references),
                           paddle.to_tensor(reference_labels), **settings)
    reference = np_contrastive(features, labels, references, reference_labels, **settings)
    assert value(loss) == pytest.approx(reference, rel=1e-9)
    assert reference != pytest.approx(np_contrastive(features, labels, **settings))


def test_gradient_matches_finite_differences():
    labels = pk_labels(3, 3)
    features = np.random.default_rng(11).normal(size=(9, 4))
    y = paddle.to_tensor(labels)
    settings = dict(positive_margin=0.2, negative_margin=1.2)
    assert_gradient(lambda f: contrastiveloss(f, y, **settings), lambda f: np_contrastive(f, labels, **settings),
                    features)


@pytest.mark.parametrize("per_class", [2, 4])
def test_shuffled_batch_gives_the_pk_loss(per_class):
    rng = np.random.default_rng(per_class)
    labels = pk_labels(4, per_class, spread=False)
    features = rng.normal(size=(len(labels), 16))
    assert_shuffle_invariant(
        lambda f, y, order: value(contrastiveloss(tensor(f), paddle.to_tensor(y), **DEFAULTS)), features, labels, rng)


@pytest.mark.parametrize("labels,message", [([0, 1, 2], "no two images in the batch share a class"),
                                            ([2, 2, 2], "no negative pair")])
def test_bad_batch_raises_eagerly(labels, message):
    with pytest.raises(UserError, match=message):
        contrastiveloss(paddle.randn([len(labels), 4]), paddle.to_tensor(np.array(labels)), **DEFAULTS)


def test_static_program_trains_one_step():
    assert_static_step_matches("contrastiveloss", np.array([3, 1, 3, 1, 2, 2]), 15,
                               lambda embedding, labels: np_contrastive(embedding, labels, **DEFAULTS))
