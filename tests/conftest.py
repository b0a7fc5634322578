"""Shared fixtures: static mode never leaks out of a test; a tiny learnable image data set."""
import os

import numpy as np
import pytest
from PIL import Image


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


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """(data_dir, train_list, val_list): 8 training classes and 4 held-out classes of 6 images each."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    lists = {}
    for split, labels in (("train", range(1, 9)), ("val", range(101, 105))):
        lines = [line for label in labels for line in _write_class_images(str(root), label, 6, rng)]
        lists[split] = str(root / f"{split}.txt")
        with open(lists[split], "w") as f:
            f.writelines(lines)
    return str(root), lists["train"], lists["val"]


@pytest.fixture(scope="session")
def trained(tiny_dataset, tmp_path_factory):
    """A ResNet18 run (train_runs.run_train: tripletloss, 2 steps, 32x32, 16-d embedding), what it printed and
    the data it was trained on.

    Shared by every test of this process: read it, or copy its save_dir (train_runs.copy_run) to resume or
    damage it; a resume passes --embedding_size=16.
    """
    import contextlib
    import io

    from train_runs import run_train

    data_dir, _, val_list = tiny_dataset
    out = tmp_path_factory.mktemp("trained")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_train(tiny_dataset, str(out), "--embedding_size=16", iters=2)
    import paddle
    paddle.disable_static()
    return {"save_dir": str(out), "checkpoint": str(out / "ResNet18" / "latest"), "data_dir": data_dir,
            "val_list": val_list, "printed": printed.getvalue()}
