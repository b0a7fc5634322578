"""engine/optimizers.py: each --optimizer steps as its formula says, and its state resumes exactly."""
import types

import numpy as np
import paddle
import pytest
from paddle_modes import static_mode

from engine import checkpoint
from engine.optimizers import OPTIMIZERS, make_optimizer
from engine.training import _check_same_optimizer
from utility.errors import UserError

LR, WEIGHT_DECAY, MOMENTUM = 0.1, 0.05, 0.9
W0 = np.array([[0.5, -0.3], [0.2, 0.8], [-0.6, 0.1]], np.float32)
X = np.array([[1.0, 2.0, -1.0], [0.5, -1.5, 2.0]], np.float32)
T = np.array([[0.3, -0.2], [1.0, 0.4]], np.float32)


def settings(optimizer):
    return types.SimpleNamespace(optimizer=optimizer, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def least_squares(optimizer):
    """(main, startup, loss) of mean((X W - T)^2) over one 3x2 parameter W, stepped by `optimizer`."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():  # as the engine's
        x = paddle.static.data("x", [None, 3], "float32")
        t = paddle.static.data("t", [None, 2], "float32")
        w = paddle.static.create_parameter([3, 2], "float32", name="w",
                                           default_initializer=paddle.nn.initializer.Assign(W0))
        loss = paddle.mean((paddle.matmul(x, w) - t) ** 2)
        make_optimizer(settings(optimizer), LR).minimize(loss)
    return main, startup, loss


def gradient(w):
    return 2.0 * X.T @ (X @ w - T) / T.size


def reference_steps(optimizer, steps):
    """W after `steps` steps, written from each optimizer's published update (Paddle's epsilon placement)."""
    w = W0.astype(np.float64)
    first, second = np.zeros_like(w), np.zeros_like(w)
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8
    for step in range(1, steps + 1):
        g = gradient(w)
        if optimizer == "momentum":
            first = MOMENTUM * first + g + WEIGHT_DECAY * w
            w = w - LR * first
            continue
        if optimizer == "adam":
            g = g + WEIGHT_DECAY * w  # L2 in the gradient, as torch.optim.Adam's weight_decay
        else:
            w = w - LR * WEIGHT_DECAY * w  # decoupled: the parameter shrinks outside the moments
        first = beta1 * first + (1 - beta1) * g
        second = beta2 * second + (1 - beta2) * g * g
        corrected_lr = LR * np.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        w = w - corrected_lr * first / (np.sqrt(second) + epsilon * np.sqrt(1 - beta2 ** step))
    return w


def run_steps(exe, main, steps):
    for _ in range(steps):
        exe.run(main, feed={"x": X, "t": T})
    return np.array(paddle.static.global_scope().find_var("w").get_tensor())


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_steps_as_its_formula(optimizer):
    with static_mode(), paddle.static.scope_guard(paddle.static.Scope()):
        main, startup, _ = least_squares(optimizer)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        found = run_steps(exe, main, 3)
    np.testing.assert_allclose(found, reference_steps(optimizer, 3), rtol=0, atol=2e-6)
    assert not np.allclose(found, reference_steps("adamw" if optimizer == "adam" else "adam", 3), atol=1e-4)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_moments_are_saved_and_a_resume_continues_exactly(optimizer, tmp_path):
    with static_mode(), paddle.static.scope_guard(paddle.static.Scope()):
        main, startup, _ = least_squares(optimizer)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        run_steps(exe, main, 2)
        checkpoint.save_checkpoint(main, str(tmp_path), "2", {})
        uninterrupted = run_steps(exe, main, 2)
        exe.run(startup)  # parameters and moments back to their start
        checkpoint.restore(main, str(tmp_path / "2"))
        resumed = run_steps(exe, main, 2)
    np.testing.assert_array_equal(resumed, uninterrupted)
    np.testing.assert_allclose(resumed, reference_steps(optimizer, 4), rtol=0, atol=2e-6)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_parameter_without_weight_decay_gets_none_from_any_optimizer(optimizer):
    # Both parameters get no gradient; only the weight decay can move them.
    with static_mode(), paddle.static.scope_guard(paddle.static.Scope()):
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
            x = paddle.static.data("x", [None, 3], "float32")
            ones = paddle.nn.initializer.Constant(1.0)
            exempt = paddle.static.create_parameter(
                [3, 2], "float32", attr=paddle.ParamAttr(name="proxies", regularizer=paddle.regularizer.L2Decay(0.0),
                                                         initializer=ones))
            plain = paddle.static.create_parameter([3, 2], "float32", name="w", default_initializer=ones)
            loss = paddle.mean(paddle.matmul(x, exempt) * 0 + paddle.matmul(x, plain) * 0)
            make_optimizer(settings(optimizer), LR).minimize(loss)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        exe.run(main, feed={"x": X})
        scope = paddle.static.global_scope()
        exempt_value, plain_value = (np.array(scope.find_var(name).get_tensor()) for name in ("proxies", "w"))
    np.testing.assert_array_equal(exempt_value, 1.0)
    assert (plain_value < 1.0).all()  # the decay did act on the other one


def test_a_checkpoint_without_adams_moments_is_refused(tmp_path):
    with static_mode(), paddle.static.scope_guard(paddle.static.Scope()):
        momentum_main, momentum_startup, _ = least_squares("momentum")
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(momentum_startup)
        run_steps(exe, momentum_main, 1)
        checkpoint.save_checkpoint(momentum_main, str(tmp_path), "1", {})
        adam_main, adam_startup, _ = least_squares("adam")
        exe.run(adam_startup)
        with pytest.raises(UserError, match=r"holds no optimizer state for .*w_moment1_0.*the --optimizer it was "
                                            r"trained with"):
            checkpoint.restore(adam_main, str(tmp_path / "1"))


def test_a_resume_keeps_the_optimizer_of_its_checkpoint():
    def resumed_with(optimizer, saved_args):
        _check_same_optimizer(types.SimpleNamespace(optimizer=optimizer), "run/ResNet18/40",
                              types.SimpleNamespace(args=saved_args))

    resumed_with("adam", {"optimizer": "adam"})
    resumed_with("momentum", {})  # saved before --optimizer existed
    with pytest.raises(UserError, match=r"run/ResNet18/40 was trained with --optimizer=adamw: resume with it"):
        resumed_with("momentum", {"optimizer": "adamw"})
