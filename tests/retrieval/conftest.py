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
def tiny_export(tiny_checkpoint, built_once):
    """An exported model folder of tiny_checkpoint (infer.py --export_model), and infer.py's dump of the val list;
    made once per test run, read only."""
    def build(out):
        import paddle

        import infer

        infer.main([f"--pretrained_model={tiny_checkpoint['checkpoint']}", f"--data_dir={tiny_checkpoint['data_dir']}",
                    f"--infer_list={tiny_checkpoint['val_list']}", "--num_workers=0",
                    f"--export_model={out / 'model'}", f"--output_dir={out / 'dump'}"])
        paddle.disable_static()

    out = built_once("retrieval-export", build)
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


@pytest.fixture(scope="session")
def uncertain_index(tiny_dataset, built_once):
    """A model that predicts uncertainty (train_runs.run_train: uncertaintytriplet, --uncertainty True, 1 step),
    `index.py build --pretrained_model` of it over the tiny val list, and infer.py's dump of that list by the
    index's model: {"index_dir", "data_dir", "val_list", "dump_dir"}; made once per test run, read only."""
    data_dir, _, val_list = tiny_dataset
    out = built_once("uncertain", lambda folder: _build_uncertain_index(tiny_dataset, folder))
    return {"index_dir": str(out / "index"), "data_dir": data_dir, "val_list": val_list, "dump_dir": str(out / "dump")}


def _build_uncertain_index(tiny_dataset, out):
    import contextlib
    import io

    import paddle
    from train_runs import run_train, skip_validation_embedding

    import index
    import infer

    data_dir, _, val_list = tiny_dataset
    with contextlib.redirect_stdout(io.StringIO()), pytest.MonkeyPatch.context() as patch:
        skip_validation_embedding(patch)  # no check reads this run's Recall@1
        run_train(tiny_dataset, str(out / "run"), "--embedding_size=8", "--uncertainty=True", "--alpha=1.0",
                  loss="uncertaintytriplet", iters=1)
    with contextlib.redirect_stdout(io.StringIO()):
        paddle.disable_static()
        index.main(["build", f"--pretrained_model={out / 'run' / 'ResNet18' / 'latest'}", f"--gallery_list={val_list}",
                    f"--data_dir={data_dir}", f"--index_dir={out / 'index'}", "--num_workers=0"])
        paddle.disable_static()
        infer.main([f"--inference_model={out / 'index' / 'model'}", f"--data_dir={data_dir}",
                    f"--infer_list={val_list}", "--num_workers=0", f"--output_dir={out / 'dump'}"])
        paddle.disable_static()
