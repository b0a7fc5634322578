"""The center loss term: against numpy, its gradients, its centres' learning rate, and in train.py's program."""
import os

import numpy as np
import paddle
import pytest
from loss_checks import assert_gradient, default_dtype, np_center, tensor, value
from numeric import numeric_gradient
from paddle_modes import static_mode
from train_runs import final_parameters, run_train

import losses
from cli.args import defaults
from losses.centerloss import CenterLossParams, center_loss
from utility.errors import UserError

SPEC = losses.AUXILIARY["centerloss"]


def term(dim, num_classes, centers=None, weight=0.5):
    """The weighted term as train.py builds it, with float64 centres set to `centers` when given."""
    with default_dtype("float64"):
        layer = SPEC.build_loss(dim, num_classes, weight=weight)
    if centers is not None:
        layer.proxies.set_value(centers)
    return layer


def test_off_by_default_and_not_a_loss_name():
    assert CenterLossParams().weight == 0.0
    assert SPEC.build_loss(4, 3, SPEC.params_from(defaults("train"))) is None
    assert "centerloss" not in losses.LOSSES
    with pytest.raises(UserError, match="must be 0 or more"):
        CenterLossParams(weight=-1.0)


def test_matches_reference_and_is_weighted():
    rng = np.random.default_rng(1)
    features, centers, labels = rng.normal(size=(8, 5)), rng.normal(size=(4, 5)), np.array([0, 3, 1, 1, 2, 0, 3, 3])
    reference = np_center(features, labels, centers)
    assert reference > 1.0
    assert value(center_loss(tensor(features), paddle.to_tensor(labels), tensor(centers))) == pytest.approx(
        reference, rel=1e-12)
    weighted = term(5, 4, centers, weight=0.0005)(tensor(features), paddle.to_tensor(labels))
    assert value(weighted) == pytest.approx(0.0005 * reference, rel=1e-12)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(2)
    features, centers, labels = rng.normal(size=(6, 3)), rng.normal(size=(3, 3)), np.array([0, 2, 2, 1, 0, 0])
    y = paddle.to_tensor(labels)
    assert_gradient(lambda f: center_loss(f, y, tensor(centers)), lambda f: np_center(f, labels, centers), features)
    c = tensor(centers)
    center_loss(tensor(features), y, c).backward()
    np.testing.assert_allclose(c.grad.numpy(), numeric_gradient(lambda x: np_center(features, labels, x), centers),
                               rtol=1e-5, atol=1e-7)


def test_class_ids_without_a_centre_are_refused():
    with pytest.raises(UserError, match="centerloss: class id 4 has no proxy"):
        term(3, 4)(paddle.randn([2, 3], "float64"), paddle.to_tensor(np.array([0, 4])))


def test_centres_get_the_unweighted_gradient():
    # One SGD step (lr 0.1) of weight x center loss in a static Program: the centres learn at 1 / weight times the
    # rate, so they move by 0.1 x the gradient of the unweighted loss (reid-strong-baseline's centre update).
    rng = np.random.default_rng(3)
    features, labels = rng.normal(size=(6, 4)).astype("float32"), np.array([0, 1, 2, 0, 1, 2])
    with static_mode():
        paddle.seed(5)
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 4], "float32")
            y = paddle.static.data("y", [None], "int64")
            loss = SPEC.build_loss(4, 3, weight=0.001)(x, y)
            paddle.optimizer.SGD(0.1, weight_decay=paddle.regularizer.L2Decay(0.5)).minimize(loss)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        scope = paddle.static.global_scope()
        before = np.array(scope.find_var("centerloss_centers").get_tensor()).astype(float)
        exe.run(main, feed={"x": features, "y": labels})
        after = np.array(scope.find_var("centerloss_centers").get_tensor()).astype(float)
    gradient = numeric_gradient(lambda c: np_center(features.astype(float), labels, c), before)
    np.testing.assert_allclose(after - before, -0.1 * gradient, rtol=1e-3, atol=1e-6)


@pytest.mark.usefixtures("no_recall")
def test_train_learns_and_saves_the_centres(tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "center")
    run_train(tiny_dataset, out, "--center_loss_weight=0.0005", "--save_iter_step=1", "--samples_each_class=2",
              loss="batchhardtripletloss")
    capsys.readouterr()
    first, second = (final_parameters(os.path.join(out, "ResNet18", step))["centerloss_centers"]
                     for step in ("1", "2"))
    assert first.shape[0] == 8  # one centre per training class of the tiny data set
    assert np.abs(second - first).max() > 1e-6, "the centres must learn"
