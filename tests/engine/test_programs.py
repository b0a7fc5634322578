"""Device choice (engine/device.py) and LR schedules (engine/programs.py); the GPU path is checked without a GPU."""
import paddle
import pytest

from cli.args import parse_args
from engine import device, programs
from utility.errors import UserError


def test_cpu_build_runs_on_cpu_and_refuses_gpu():
    if paddle.is_compiled_with_cuda():
        pytest.skip("this test is about the CPU build")
    assert isinstance(device.place(None), paddle.CPUPlace)
    assert isinstance(device.place(False), paddle.CPUPlace)
    with pytest.raises(UserError, match="built without CUDA"):
        device.place(True)


@pytest.mark.parametrize("selected, gpu", [(None, 0), ("1", 1), ("3,2", 3)])
def test_gpu_build_uses_the_gpu_the_launcher_selected(monkeypatch, selected, gpu):
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle, "CUDAPlace", lambda dev: ("cuda", dev))
    if selected is None:
        monkeypatch.delenv("FLAGS_selected_gpus", raising=False)
    else:
        monkeypatch.setenv("FLAGS_selected_gpus", selected)
    assert device.place(None) == ("cuda", gpu)
    assert device.place(True) == ("cuda", gpu)
    assert isinstance(device.place(False), paddle.CPUPlace)


def _lrs(flags, iterations, total):
    scheduler = programs.make_lr_scheduler(parse_args("train", flags), total)
    values = []
    for _ in range(iterations):
        values.append(scheduler.get_lr())
        scheduler.step()
    return values


def test_piecewise_decay_with_warmup():
    lrs = _lrs(["--lr=0.1", "--lr_steps=4,6", "--warmup_iter=2"], 8, 8)
    assert lrs == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_reaches_zero_at_the_end():
    lrs = _lrs(["--lr=0.1", "--lr_strategy=cosine"], 5, 4)
    assert lrs[0] == pytest.approx(0.1) and lrs[2] == pytest.approx(0.05) and lrs[4] == pytest.approx(0.0, abs=1e-12)
