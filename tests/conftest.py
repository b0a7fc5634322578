"""Shared fixtures: static mode never leaks out of a test; a tiny learnable image data set."""
import os
import shutil
import sys
import tempfile
import traceback

import numpy as np
import pytest
from PIL import Image

MEMORY_FOLDER = "/dev/shm"  # a tmpfs on Linux
MEMORY_NEEDED = 8 << 30     # bytes free there; the peak measured was 0.4 GB per test process


def pytest_configure(config):
    """Temporary files in memory: tmp_path, and tempfile's folders of the code under test and of the scripts
    it runs, go to /dev/shm when it has room, unless TMPDIR or --basetemp chose a place. Tests write many
    checkpoints (90 MB for ResNet18) and exports: on the disk's file system a checkpoint costs ~0.35 s of
    system time, in tmpfs ~0.15 s (tests/engine: 13 s of system time -> 8-9 s). With
    tmp_path_retention_policy = failed (pytest.ini), a passing test's folder is removed when it ends."""
    if os.environ.get("TMPDIR") or config.option.basetemp or not os.access(MEMORY_FOLDER, os.W_OK):
        return
    free = os.statvfs(MEMORY_FOLDER)
    if free.f_bavail * free.f_frsize >= MEMORY_NEEDED:
        os.environ["TMPDIR"] = MEMORY_FOLDER  # inherited by the pytest-xdist workers and every subprocess
        tempfile.tempdir = None               # tempfile reads TMPDIR again


OP_CALLSTACK_FRAMES = 8
_extract_stack = traceback.extract_stack


def _innermost_frames(f=None, limit=None):
    return _extract_stack(f or sys._getframe(1), limit=limit or OP_CALLSTACK_FRAMES)


@pytest.fixture(autouse=True, scope="session")
def _short_op_callstacks():
    """Paddle 3.3.1 records the Python stack of every static-graph operator it creates (traceback.extract_stack,
    called from C++, whose list it never releases). Under pytest a stack is ~50 frames deep: the extraction cost
    ~15 % of the CPU time of the tests that build networks, and the frames kept (350,000 after
    tests/models/test_head.py alone) made every full garbage collection slower. Tests keep the innermost 8
    frames, which still reach the line of our code that built the operator."""
    traceback.extract_stack = _innermost_frames
    yield
    traceback.extract_stack = _extract_stack


@pytest.fixture(autouse=True)
def _dynamic_mode_after_each_test():
    yield
    import sys
    if "paddle" in sys.modules:
        sys.modules["paddle"].disable_static()


def _write_class_images(root, label, count, rng):
    """Images whose colour depends on the class, so a few steps can learn something."""
    colour = np.array([(label * 53) % 256, (label * 97) % 256, (label * 151) % 256], dtype=np.float32)
    lines = []
    for k in range(count):
        pixels = np.clip(colour + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
        rel_path = f"c{label}/{k}.png"
        os.makedirs(os.path.join(root, f"c{label}"), exist_ok=True)
        Image.fromarray(pixels).save(os.path.join(root, rel_path))
        lines.append(f"{rel_path} {label}\n")
    return lines


@pytest.fixture
def no_recall(monkeypatch):
    """For train.py runs whose Recall@1 no check reads (train_runs.skip_validation_embedding)."""
    from train_runs import skip_validation_embedding

    skip_validation_embedding(monkeypatch)


@pytest.fixture(autouse=True)
def no_curves(request, monkeypatch):
    """train.py runs in this process draw no curves.png (~0.1 s of matplotlib at each of their evaluations)
    unless the test is marked `curves`; evaluation/plot.py is tested on its own. Only tests with the tiny data
    set train in this process: the others do not import the trainer (and Paddle) for this."""
    if "tiny_dataset" in request.fixturenames and request.node.get_closest_marker("curves") is None:
        monkeypatch.setattr("engine.trainer.Trainer._plot", lambda self: None)


def _built_once(tmp_path_factory, name, build):
    """A folder that build(folder) fills once per test run, shared by the pytest-xdist workers: the first
    worker to need it builds it in the run's common temporary folder while the others wait, then all read it
    (without xdist, in the session's own temporary folder). Read only: copy it before changing anything."""
    from utility.locks import FolderLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-<user>/pytest-<N>: this run's, above every worker's own folder
    folder, done = root / name, root / f"{name}.done"
    with FolderLock(str(root / f"{name}.lock"), f"build of {name}", wait=True):
        if not done.exists():
            if folder.exists():  # a build that failed in another worker: start again
                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def built_once(tmp_path_factory):
    """built_once(name, build) -> the folder build(folder) filled once per test run, for module fixtures whose
    tests pytest-xdist may share out between its workers (read only; copy before changing anything)."""
    return lambda name, build: _built_once(tmp_path_factory, name, build)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """(data_dir, train_list, val_list): 8 training classes and 4 held-out classes of 6 images each."""
    def build(root):
        rng = np.random.default_rng(0)
        for split, labels in (("train", range(1, 9)), ("val", range(101, 105))):
            lines = [line for label in labels for line in _write_class_images(str(root), label, 6, rng)]
            with open(root / f"{split}.txt", "w") as f:
                f.writelines(lines)

    root = _built_once(tmp_path_factory, "tiny", build)
    return str(root), str(root / "train.txt"), str(root / "val.txt")


@pytest.fixture(scope="session")
def digits_set(tmp_path_factory):
    """(data_dir, train_list, val_list) of the offline digits set (data/digits.py: 1797 PNGs), built once per
    test run; read only."""
    from data.digits import prepare_digits

    folder = _built_once(tmp_path_factory, "digits", lambda folder: prepare_digits(folder / "digits"))
    return prepare_digits(folder / "digits")  # finished: only its paths


@pytest.fixture(scope="session")
def trained(tiny_dataset, tmp_path_factory):
    """A ResNet18 run (train_runs.run_train: tripletloss, 2 steps, 32x32, 16-d embedding), what it printed and
    the data it was trained on. No check reads its Recall@1 (the validation reports 0.0: no_recall).

    Shared by every test of this run (one run for all pytest-xdist workers): read it, or copy its save_dir
    (train_runs.copy_run) to resume or damage it; a resume passes --embedding_size=16.
    """
    def build(folder):
        import contextlib
        import io

        import paddle
        from train_runs import run_train, skip_validation_embedding

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as patch:
            skip_validation_embedding(patch)
            run_train(tiny_dataset, str(folder / "run"), "--embedding_size=16", iters=2)
        paddle.disable_static()
        (folder / "printed.txt").write_text(printed.getvalue())

    data_dir, _, val_list = tiny_dataset
    folder = _built_once(tmp_path_factory, "trained", build)
    out = folder / "run"
    return {"save_dir": str(out), "checkpoint": str(out / "ResNet18" / "latest"), "data_dir": data_dir,
            "val_list": val_list, "printed": (folder / "printed.txt").read_text()}
