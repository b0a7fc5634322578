"""Every `python train.py ...` command of the README and docs/ fits its own flags together.

The commands run through the configuration step and the training loader's checks on fake CUB-200-2011
lists (the default data set): a default batch size that does not fit a loss's batch layout, a K that
does not divide the batch, an unknown flag or loss, all fail here. Data paths, checkpoints and "..."
are the reader's own: they are replaced by the fake lists.
"""
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLACE_FLAGS = ("--data_dir", "--train_list", "--val_list", "--pretrained_model", "--checkpoint",
               "--model_save_dir", "--with_camera")


def documented_train_commands():
    """(page, argv) of each `python train.py` command in a code block of the README or docs/."""
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", page.read_text())  # join continued lines
        for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S):
            for line in block.splitlines():
                line = line.split("#", 1)[0].strip()
                if line.startswith(("python train.py", "dml-train")):
                    found.append((page.name, shlex.split(line)[2 if line.startswith("python") else 1:]))
    return found


def _without_places(argv):
    """argv without "...", the place flags and their values; recipe paths made absolute."""
    kept, skip_value = [], False
    for token in argv:
        if skip_value or token == "...":
            skip_value = False
            continue
        name = token.split("=", 1)[0]
        if name in PLACE_FLAGS:
            skip_value = "=" not in token
            continue
        kept.append(re.sub(r"(^|=)recipes/", rf"\g<1>{REPO}/recipes/", token))
    return kept


@pytest.fixture(scope="module")
def fake_cub_root(tmp_path_factory):
    """data/CUB_200_2011 with 4 images of each of 200 classes (100 to train), the default lists, as the cwd."""
    import cv2
    import numpy as np

    tmp_path = tmp_path_factory.mktemp("cub")
    image = np.full((40, 40, 3), 128, np.uint8)
    folder = tmp_path / "data" / "CUB_200_2011" / "images"
    folder.mkdir(parents=True)
    lines = []
    for label in range(1, 201):
        for i in range(4):
            cv2.imwrite(str(folder / f"{label}_{i}.jpg"), image)
            lines.append(f"images/{label}_{i}.jpg {label}")
    (tmp_path / "data" / "CUB200_train.txt").write_text("\n".join(lines[:400]) + "\n")
    (tmp_path / "data" / "CUB200_val.txt").write_text("\n".join(lines[400:]) + "\n")
    return tmp_path


@pytest.fixture
def fake_cub(fake_cub_root, monkeypatch):
    monkeypatch.chdir(fake_cub_root)


def test_the_docs_have_train_commands():
    assert len(documented_train_commands()) >= 5


@pytest.mark.parametrize("page, argv", documented_train_commands(),
                         ids=lambda value: value if isinstance(value, str) else " ".join(value)[:60])
def test_documented_train_command_fits_together(fake_cub, page, argv):
    import losses
    import reader
    from cli.config import check_model_and_loss, resolve

    # The fake lists replace the data a command (or its recipe) names; they have no camera column.
    fake_data = ["--train_list=data/CUB200_train.txt", "--val_list=data/CUB200_val.txt", "--with_camera=False"]
    config = resolve("train", _without_places(argv) + fake_data)
    check_model_and_loss(config)
    spec = losses.get(config.loss_name)
    train_list = reader.read_image_list(config.train_list, config.data_dir)
    loader = reader.make_train_loader(
        train_list, image_shape=config.image_shape, batch_size=config.train_batch_size, layout=spec.layout,
        samples_each_class=spec.samples_each_class(config.samples_each_class), num_workers=0, seed=config.seed,
        world_size=1, rank=0, augment=reader.loaders.augment_from_args(config), max_pixels=config.max_image_pixels)
    loader.close()
