"""rankedlistloss against a numpy loop, eagerly and in a static Program; its weights are constants."""
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import SHAPES, assert_gradient, assert_shuffle_invariant, np_rll, pk_labels, tensor, value
from numeric import numeric_gradient
from paddle_modes import assert_static_step_matches, static_mode

import losses
from losses.rankedlistloss import RankedListParams, rankedlistloss
from utility.errors import UserError

DEFAULTS = asdict(RankedListParams())


@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
def test_matches_reference_at_the_defaults(classes, per_class, dim):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    features, labels = rng.normal(size=(classes * per_class, dim)), pk_labels(classes, per_class)
    loss = losses.get("rankedlistloss").build_loss(dim, classes)(tensor(features), paddle.to_tensor(labels))
    assert value(loss) == pytest.approx(np_rll(features, labels, **DEFAULTS), rel=1e-4)


@pytest.mark.parametrize("settings", [dict(alpha=1.0, margin=0.2, temperature=3.0, balance=0.5),
                                      dict(alpha=1.6, margin=0.8, temperature=30.0, balance=2.0)])
def test_other_settings(settings):
    features, labels = np.random.default_rng(1).normal(size=(12, 6)), pk_labels(4, 3)
    loss = rankedlistloss(tensor(features), paddle.to_tensor(labels), **settings)
    assert value(loss) == pytest.approx(np_rll(features, labels, **settings), rel=1e-9)
    built = losses.get("rankedlistloss").build_loss(6, 4, **settings)
    assert value(built(tensor(features), paddle.to_tensor(labels))) == pytest.approx(value(loss))


def test_reference_is_not_trivially_zero():
    # Guard for the tests above: at the defaults both terms are active.
    features, labels = np.random.default_rng(0).normal(size=(12, 4)), pk_labels(3, 4)
    positive_part = np_rll(features, labels, **{**DEFAULTS, "balance": 0.0})
    assert positive_part > 0.05 and np_rll(features, labels, **DEFAULTS) - positive_part > 0.05


def test_gradient_holds_the_weights_constant():
    labels = pk_labels(3, 4)
    features = np.random.default_rng(10).normal(size=(12, 4))
    y = paddle.to_tensor(labels)
    settings = asdict(RankedListParams(temperature=3.0))
    assert_gradient(lambda f: rankedlistloss(f, y, **settings),
                    lambda f: np_rll(f, labels, **settings, weights_at=features), features)
    # The weights really matter: differentiating them too would give another gradient.
    x_tensor = tensor(features)
    rankedlistloss(x_tensor, y, **settings).backward()
    full = numeric_gradient(lambda f: np_rll(f, labels, **settings), features)
    assert np.abs(full - x_tensor.grad.numpy()).max() > 1e-3


def test_weights_are_constant_in_static_programs_too():
    # detach() must cut the weights out of the gradient in a PIR Program as it does eagerly.
    labels = pk_labels(3, 4)
    features = np.random.default_rng(10).normal(size=(12, 4))
    settings = asdict(RankedListParams(temperature=3.0))
    x_tensor = tensor(features)
    rankedlistloss(x_tensor, paddle.to_tensor(labels), **settings).backward()
    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 4], "float64")
            x.stop_gradient = False
            y = paddle.static.data("y", [None], "int64")
            gradient, = paddle.static.gradients([rankedlistloss(x, y, **settings)], [x])
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        static_gradient, = exe.run(main, feed={"x": features, "y": labels}, fetch_list=[gradient])
    np.testing.assert_allclose(static_gradient, x_tensor.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("per_class", [2, 4])
def test_shuffled_batch_gives_the_pk_loss(per_class):
    rng = np.random.default_rng(per_class)
    labels = pk_labels(4, per_class, spread=False)
    features = rng.normal(size=(len(labels), 16))
    assert_shuffle_invariant(lambda f, y, order: value(rankedlistloss(tensor(f), paddle.to_tensor(y), **DEFAULTS)),
                             features, labels, rng)


def test_uneven_classes_follow_the_labels():
    # Not a P x K batch: classes of 3, 2 and 4 images, interleaved.
    labels = np.array([2, 1, 2, 0, 1, 0, 2, 0, 0])
    features = np.random.default_rng(14).normal(size=(9, 4))
    loss = rankedlistloss(tensor(features), paddle.to_tensor(labels), **DEFAULTS)
    assert value(loss) == pytest.approx(np_rll(features, labels, **DEFAULTS), rel=1e-9)


@pytest.mark.parametrize("labels,message", [([0, 0, 1, 1, 2], "rankedlistloss: class 2 has a single image"),
                                            ([1, 1, 1, 1], "no anchor has a negative")])
def test_bad_batch_raises_eagerly(labels, message):
    with pytest.raises(UserError, match=message):
        rankedlistloss(paddle.randn([len(labels), 4]), paddle.to_tensor(np.array(labels)), **DEFAULTS)


def test_static_program_trains_one_step():
    assert_static_step_matches("rankedlistloss", np.array([2, 0, 1, 0, 2, 1, 0, 1, 2]), 15,
                               lambda embedding, labels: np_rll(embedding, labels, **DEFAULTS))
