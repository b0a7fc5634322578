"""Static mode for a block of a test only: it is global state and must not leak into other tests."""
import contextlib

import paddle


@contextlib.contextmanager
def static_mode():
    paddle.enable_static()
    try:
        yield
    finally:
        paddle.disable_static()


def static_loss_step(name, labels, inputs, noise=None):
    """One SGD step of loss `name` on a Linear(5 -> 4) embedding in a static PIR program.

    The batch size is known only at run time; losses that take noise (LossSpec.takes_noise) are fed
    `noise`, as the engine does. Returns (first loss, embedding of the first run, second loss,
    parameter names of the program); the first loss was checked to be a 0-d array.
    """
    import losses

    spec = losses.get(name)
    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, inputs.shape[1]], "float32")
            y = paddle.static.data("y", [None], "int64")
            embedding = paddle.nn.Linear(inputs.shape[1], 4)(x)
            loss_fn = spec.build_loss(4, 3)
            feed = {"x": inputs, "y": labels}
            if spec.takes_noise:
                feed["noise"] = noise
                loss = loss_fn(embedding, y, paddle.static.data("noise", [None, None], "float32"))
            else:
                loss = loss_fn(embedding, y)
            paddle.optimizer.SGD(learning_rate=0.5).minimize(loss)
        parameters = [p.name for p in main.global_block().all_parameters()]
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        if spec.check_batch:
            spec.check_batch(labels)
        first, emb = exe.run(main, feed=feed, fetch_list=[loss, embedding])
        second, = exe.run(main, feed=feed, fetch_list=[loss])
    assert first.shape == ()
    assert second.item() != first.item(), "the optimisation step must change the parameters"
    return first.item(), emb.astype(float), second.item(), parameters


def assert_static_step_matches(name, labels, seed, numpy_loss, positive=True):
    """static_loss_step of loss `name` on inputs drawn with `seed`: its first value equals
    `numpy_loss(embedding, labels)` (rel 1e-4), is above 0 when `positive`, and eager mode is back after it."""
    import numpy as np
    import pytest

    inputs = np.random.default_rng(seed).normal(size=(len(labels), 5)).astype("float32")
    first, embedding, _, _ = static_loss_step(name, labels, inputs)
    assert first > 0 or not positive
    assert first == pytest.approx(numpy_loss(embedding, labels), rel=1e-4, abs=1e-6)
    assert paddle.in_dynamic_mode()
