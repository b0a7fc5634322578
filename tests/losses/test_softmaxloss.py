"""softmax_loss (the classifier branch) against a numpy loop, eagerly and in a static Program."""
import numpy as np
import paddle
import pytest
from loss_checks import assert_gradient, np_softmax_loss, tensor, value
from paddle_modes import static_mode

from losses.softmaxloss import softmax_loss


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("logit_scale", [3.0, 60.0])  # 60: log-probabilities far below -64
def test_softmax_loss_matches_reference(smoothing, logit_scale):
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(8, 5)) * logit_scale, rng.integers(0, 5, size=8)
    loss = softmax_loss(tensor(logits), paddle.to_tensor(labels), label_smoothing=smoothing)
    assert value(loss) == pytest.approx(np_softmax_loss(logits, labels, smoothing), rel=1e-9)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(7)
    logits, labels = rng.normal(size=(6, 4)), rng.integers(0, 4, size=6)
    y = paddle.to_tensor(labels)
    assert_gradient(lambda x: softmax_loss(x, y, 0.2), lambda x: np_softmax_loss(x, labels, 0.2), logits)


def test_softmax_loss_in_static_program():
    logits = np.random.default_rng(12).normal(size=(6, 3)).astype("float32")
    labels = np.array([0, 2, 1, 1, 0, 2])
    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 3], "float32")
            y = paddle.static.data("y", [None], "int64")
            loss = softmax_loss(x, y, label_smoothing=0.1)
        out, = paddle.static.Executor(paddle.CPUPlace()).run(main, feed={"x": logits, "y": labels}, fetch_list=[loss])
    assert out.item() == pytest.approx(np_softmax_loss(logits.astype(float), labels, 0.1), rel=1e-5)
