"""npairsloss against a numpy loop, eagerly and in a static Program."""
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import assert_gradient, np_npairs, pk_labels, tensor, value
from paddle_modes import assert_static_step_matches

from losses.npairsloss import NPairsParams, npairsloss
from utility.errors import UserError

DEFAULTS = asdict(NPairsParams())


@pytest.mark.parametrize("classes,dim", [(3, 4), (4, 16), (8, 4)])
@pytest.mark.parametrize("reg_lambda", [0.0, 0.01, 0.5])
def test_npairsloss_matches_reference(classes, dim, reg_lambda):
    features = np.random.default_rng(classes + dim).normal(size=(2 * classes, dim))
    labels = pk_labels(classes, 2)
    loss = npairsloss(tensor(features), paddle.to_tensor(labels), reg_lambda=reg_lambda)
    assert value(loss) == pytest.approx(np_npairs(features, labels, reg_lambda=reg_lambda), rel=1e-9)


def test_repeated_class_uses_soft_targets():
    features = np.random.default_rng(5).normal(size=(8, 4))
    labels = np.array([1, 1, 2, 2, 1, 1, 3, 3])  # class 1 occurs in two pairs
    loss = npairsloss(tensor(features), paddle.to_tensor(labels), reg_lambda=0.01)
    assert value(loss) == pytest.approx(np_npairs(features, labels, reg_lambda=0.01), rel=1e-9)


def test_gradient_matches_finite_differences():
    labels = pk_labels(4, 2)
    features = np.random.default_rng(4).normal(size=(len(labels), 4))
    y = paddle.to_tensor(labels)
    assert_gradient(lambda f: npairsloss(f, y, reg_lambda=0.1), lambda f: np_npairs(f, labels, reg_lambda=0.1),
                    features)


@pytest.mark.parametrize("labels,message", [([0, 0, 1, 2], "class 1 has no positive"), ([0, 0, 1], "must be even")])
def test_bad_batch_raises_eagerly(labels, message):
    with pytest.raises(UserError, match=message):
        npairsloss(paddle.randn([len(labels), 4]), paddle.to_tensor(np.array(labels)), **DEFAULTS)


def test_static_program_trains_one_step():
    assert_static_step_matches("npairsloss", pk_labels(4, 2), 11,
                               lambda embedding, labels: np_npairs(embedding, labels, **DEFAULTS), positive=False)
