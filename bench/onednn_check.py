"""Does this Paddle train correctly with oneDNN on the CPU? Small static programs, each run with and
without FLAGS_use_onednn=1 in a fresh process, their gradients (or running statistics) compared.

    python bench/onednn_check.py            # one line per case: same / DIFFERENT / CRASHED

oneDNN is the way to a multi-threaded convolution backward on the CPU (what PyTorch uses), so the
training speed target hinges on it. In Paddle 3.3.1 the whole ResNet step runs through oneDNN once
max pooling is written as max_pool2d(return_mask=True), but its gradients are wrong: the cases below
isolate why. Run it again after upgrading Paddle: when every case says "same", oneDNN training is
worth measuring (bench/bench_train.py --variant=onednn-mask).
"""
import json
import os
import subprocess
import sys

import numpy as np

RESULT = "RESULT "  # the worker's output line, before its JSON
# What each case computes from a [30, 8] input x (rows grouped in threes as in tripletloss): the
# gradient of a scalar, or batch norm's running mean after a training step.
CASES = ("square of a slice", "product of a slice with itself", "difference of two slices",
         "square of the whole input", "F.normalize", "batch-norm running mean")


def case_loss(name, x):
    import paddle
    import paddle.nn.functional as F

    rows = paddle.reshape(x, [-1, 3, 8])
    first, second = rows[:, 0], rows[:, 1]  # slices: strided views of x
    weights = paddle.arange(8, dtype="float32")
    return {"square of a slice": lambda: paddle.sum(paddle.square(first)),
            "product of a slice with itself": lambda: paddle.sum(first * first),
            "difference of two slices": lambda: paddle.sum((first - second) * weights),
            "square of the whole input": lambda: paddle.sum(paddle.square(x)),
            "F.normalize": lambda: paddle.sum(F.normalize(x, axis=1) * weights)}[name]()


def worker(name):
    """Print the case's gradient for a fixed x (or batch norm's running mean) as one JSON line."""
    import paddle

    paddle.enable_static()
    main, startup = paddle.static.Program(), paddle.static.Program()
    values = np.random.default_rng(0).standard_normal((30, 8)).astype("float32") + 2
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [30, 8], "float32")
        x.stop_gradient = False
        if name == "batch-norm running mean":
            norm = paddle.nn.BatchNorm1D(8)
            loss = paddle.mean(paddle.nn.functional.relu(norm(x)))
            paddle.optimizer.SGD(0.1).minimize(loss)
            fetch = [norm._mean]
        else:
            loss = case_loss(name, x)
            fetch = paddle.static.gradients([loss], [x])
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    result = exe.run(main, feed={"x": values}, fetch_list=fetch)[0]
    print(RESULT + json.dumps(np.asarray(result).ravel().tolist()))


def run(name, onednn):
    env = {**os.environ, "FLAGS_use_onednn": "1" if onednn else "0"}
    done = subprocess.run([sys.executable, __file__, "--worker", name], env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    return np.array(json.loads(lines[-1].removeprefix(RESULT))) if done.returncode == 0 and lines else None


def main():
    import paddle

    print(f"Paddle {paddle.__version__}: each case with FLAGS_use_onednn=0 and =1")
    for name in CASES:
        reference, onednn = run(name, False), run(name, True)
        if reference is None:
            verdict = "the reference run failed"
        elif onednn is None:
            verdict = "CRASHED with oneDNN"
        elif np.allclose(reference, onednn, rtol=1e-4, atol=1e-5):
            verdict = "same"
        elif not onednn.any():
            verdict = "DIFFERENT (all zero with oneDNN)"
        else:
            verdict = f"DIFFERENT (largest difference {np.abs(reference - onednn).max():.3g})"
        print(f"  {name:32} {verdict}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2])
    else:
        main()
