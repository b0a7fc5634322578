"""Shared by the retrieval tests: one tiny trained checkpoint and its export per session."""
import os
import shutil

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(trained):
    """{checkpoint, data_dir, val_list}: the session's trained run (tests/conftest.py: ResNet18, 16-d
    embeddings at 32x32, 2 steps), read only."""
    return {name: trained[name] for name in ("checkpoint", "data_dir", "val_list")}


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint, tmp_path_factory):
    """An exported model folder of tiny_checkpoint (infer.py --export_model), and infer.py's dump of the val list."""
    import infer

    out = tmp_path_factory.mktemp("retrieval-export")
    infer.main([f"--pretrained_model={tiny_checkpoint['checkpoint']}", f"--data_dir={tiny_checkpoint['data_dir']}",
                f"--infer_list={tiny_checkpoint['val_list']}", "--num_workers=0",
                f"--export_model={out / 'model'}", f"--output_dir={out / 'dump'}"])
    import paddle
    paddle.disable_static()
    return {"model_dir": str(out / "model"), "dump_dir": str(out / "dump"), **tiny_checkpoint}


@pytest.fixture(scope="session")
def tiny_photos(tiny_checkpoint, tmp_path_factory):
    """A folder of class subfolders (copies of the val list's images), as a user's photo folder looks."""
    out = tmp_path_factory.mktemp("photos")
    with open(tiny_checkpoint["val_list"]) as f:
        for line in f:
            path, label = line.split()
            target = out / f"class{label}" / os.path.basename(path)
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(os.path.join(tiny_checkpoint["data_dir"], path), target)
    return str(out)
