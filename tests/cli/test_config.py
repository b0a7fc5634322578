"""cli/config.py: the one configuration step (defaults, digits fallback, demo settings, checkpoint settings)."""
import json
import os
from pathlib import Path

import pytest

import data
from cli.config import DEMO_SETTINGS, resolve
from utility.errors import UserError


@pytest.fixture
def in_empty_dir(tmp_path, monkeypatch):
    """Run from a folder without data/CUB200_train.txt."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_no_data_given_and_no_cub_uses_digits_with_demo_settings(in_empty_dir, capsys):
    digits_dir = in_empty_dir / "built" / "digits"
    config = resolve("train", ["--lr", "0.1", "--train_batch_size=30"], digits_dir=digits_dir)
    assert (config.data_dir, config.train_list, config.val_list) == (
        str(digits_dir), str(digits_dir / "train.txt"), str(digits_dir / "val.txt"))
    assert os.path.isfile(config.train_list) and os.path.isfile(config.val_list)
    assert config.lr == 0.1 and config.train_batch_size == 30  # typed flags win over demo settings
    assert config.image_shape == (3, 32, 32) and config.total_iter_num == DEMO_SETTINGS["total_iter_num"]
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["No data set given and data/CUB200_train.txt is absent: using the offline digits "
                     "data set in built/digits (train digits 0-4, test 5-9)",
                     "Demo settings for the digits data set (type a flag to override): --image_shape=3,32,32 "
                     "--total_iter_num=150 --lr_steps=100 --test_iter_step=50 --save_iter_step=50"]


def test_num_epochs_typed_with_digits_keeps_epochs(in_empty_dir, digits_set):
    config = resolve("train", ["--num_epochs=3"], digits_dir=digits_set[0])  # built (the test above builds one)
    assert config.num_epochs == 3 and config.total_iter_num is None


@pytest.mark.parametrize("flags", [["--data_dir", "mine"], ["--train_list=mine.txt"], ["--val_list", "v.txt"]])
def test_data_flags_typed_by_the_user_are_respected(in_empty_dir, flags):
    config = resolve("train", flags, digits_dir=in_empty_dir / "digits")
    assert config.total_iter_num == 30000 and config.image_shape == (3, 224, 224)
    assert not (in_empty_dir / "digits").exists()


def test_present_cub_list_is_left_alone(in_empty_dir):
    (in_empty_dir / "data").mkdir()
    (in_empty_dir / "data" / "CUB200_train.txt").write_text("images/001.A/a.jpg 1\n")
    config = resolve("train", [], digits_dir=in_empty_dir / "digits")
    assert config.train_list == "data/CUB200_train.txt" and config.image_shape == (3, 224, 224)
    assert not (in_empty_dir / "digits").exists()


def test_the_configuration_cannot_be_changed_afterwards(in_empty_dir):
    config = resolve("train", ["--train_list=mine.txt"])
    with pytest.raises(AttributeError, match="settled"):
        config.lr = 1.0
    assert "explicit" not in config.as_dict() and "triplet_mining" not in config.as_dict()


def test_old_triplet_mining_flag_names_the_batch_hard_loss(in_empty_dir):
    assert resolve("train", ["--train_list=x", "--triplet_mining=hard"]).loss_name == "batchhardtripletloss"
    with pytest.raises(UserError, match="tripletloss only"):
        resolve("train", ["--train_list=x", "--loss_name=emlloss", "--triplet_mining=hard"])


def _checkpoint(folder, **trained):
    """A checkpoint's state.json in the layout before RunState's version: the network's settings among the args."""
    folder.mkdir(parents=True)
    args = {"model": "ResNet18", "embedding_size": 16, "image_shape": [3, 32, 32], "loss_name": "tripletloss",
            "triplet_mining": "hard", "margin": 0.3, "samples_each_class": 4, **trained}
    state = {"position": {"iteration": 2, "pass_id": 0, "batch": 2}, "scheduler": {"last_epoch": 2, "last_lr": 0.01},
             "classes": [0, 1, 2], "args": args}
    (folder / "state.json").write_text(json.dumps(state))
    return str(folder)


def test_eval_adopts_the_checkpoint_settings_unless_typed(in_empty_dir, capsys):
    folder = _checkpoint(in_empty_dir / "ckpt")
    config = resolve("eval", [f"--pretrained_model={folder}", "--val_list=v.txt", "--margin=0.5"])
    assert (config.model, config.embedding_size, config.image_shape) == ("ResNet18", 16, (3, 32, 32))
    assert config.loss_name == "batchhardtripletloss"  # an old checkpoint's --triplet_mining=hard
    assert config.margin == 0.5
    out = capsys.readouterr().out
    assert "Note: the checkpoint's training run used --margin=0.3, you gave 0.5" in out
    assert "From the checkpoint's training run: --model=ResNet18 --embedding_size=16 --image_shape=3,32,32 " \
           "--loss_name=batchhardtripletloss --samples_each_class=4" in out


def test_eval_adopts_every_loss_setting_of_the_checkpoint(in_empty_dir):
    folder = _checkpoint(in_empty_dir / "ckpt", loss_name="multisimilarityloss", triplet_mining="none",
                         ms_alpha=3.0, ms_beta=40.0, rll_alpha=1.5)
    config = resolve("eval", [f"--pretrained_model={folder}", "--val_list=v.txt", "--ms_beta=45"])
    assert (config.loss_name, config.ms_alpha, config.ms_beta, config.rll_alpha) == ("multisimilarityloss", 3.0,
                                                                                      45.0, 1.5)


def test_eval_adopts_the_preprocessing_a_checkpoint_was_trained_with(in_empty_dir, capsys):
    folder = _checkpoint(in_empty_dir / "ckpt", ink_crop=True, eval_resize="full")
    config = resolve("eval", [f"--pretrained_model={folder}", "--val_list=v.txt"])
    assert config.ink_crop is True and config.eval_resize == "full"
    assert "--eval_resize=full --ink_crop=True" in capsys.readouterr().out
    old = _checkpoint(in_empty_dir / "old")  # trained before --ink_crop existed: without it
    assert resolve("eval", [f"--pretrained_model={old}", "--val_list=v.txt"]).ink_crop is False


def test_infer_takes_the_shape_of_an_exported_model_and_defaults_to_the_val_list(in_empty_dir):
    exported = in_empty_dir / "exported"
    exported.mkdir()
    for name in ("inference.json", "inference.pdiparams"):
        (exported / name).write_text("")
    (exported / "preprocess.json").write_text(json.dumps({"model": "ResNet34", "embedding_size": 0,
                                                          "image_shape": [3, 48, 48]}))
    config = resolve("infer", [f"--inference_model={exported}", "--val_list=v.txt"])
    assert config.image_shape == (3, 48, 48) and config.model == "ResNet34" and config.infer_list == "v.txt"
    with pytest.raises(UserError, match="neither --pretrained_model"):
        resolve("infer", [f"--inference_model={exported}", f"--pretrained_model={exported}"])
    (exported / "preprocess.json").unlink()
    with pytest.raises(UserError, match="preprocess.json missing"):
        resolve("infer", [f"--inference_model={exported}", "--val_list=v.txt"])


def test_eval_without_a_network_is_a_user_error(in_empty_dir):
    with pytest.raises(UserError, match="--pretrained_model=DIR"):
        resolve("eval", ["--val_list=v.txt"])


def test_default_digits_folder_belongs_to_the_repo_not_the_cwd():
    assert data.DIGITS_DIR.is_absolute()
    assert data.DIGITS_DIR == Path(data.__file__).resolve().parent / "digits"


def test_eval_adopts_the_network_options_of_a_checkpoint(in_empty_dir):
    folder = _checkpoint(in_empty_dir / "neck", neck="bnneck", neck_feat="before", last_stride=1, stem="small")
    config = resolve("eval", [f"--pretrained_model={folder}", "--val_list=v.txt"])
    assert (config.neck, config.neck_feat, config.last_stride, config.stem) == ("bnneck", "before", 1, "small")


def test_eval_adopts_the_network_record_of_a_versioned_checkpoint(in_empty_dir):
    folder = _checkpoint(in_empty_dir / "v2")
    state = json.loads((in_empty_dir / "v2" / "state.json").read_text())
    state.update(version=2, network={"model": "ResNet34", "embedding_size": 8, "image_shape": [3, 48, 48],
                                     "neck": "bnneck", "neck_feat": "before", "last_stride": 1, "stem": "small",
                                     "eval_resize": "full", "ink_crop": True})
    (in_empty_dir / "v2" / "state.json").write_text(json.dumps(state))
    config = resolve("eval", [f"--pretrained_model={folder}", "--val_list=v.txt"])
    assert (config.model, config.embedding_size, config.image_shape, config.neck, config.neck_feat,
            config.last_stride, config.stem, config.eval_resize, config.ink_crop) == \
        ("ResNet34", 8, (3, 48, 48), "bnneck", "before", 1, "small", "full", True)
    assert config.loss_name == "batchhardtripletloss" and config.samples_each_class == 4  # the loss: from args


@pytest.mark.parametrize("image_shape", [[3, -5, 32], [4, 32, 32], "abc"])
def test_infer_refuses_an_exported_model_with_a_wrong_network_setting(in_empty_dir, image_shape):
    exported = in_empty_dir / "exported"
    exported.mkdir()
    for name in ("inference.json", "inference.pdiparams"):
        (exported / name).write_text("")
    (exported / "preprocess.json").write_text(json.dumps({"model": "ResNet34", "image_shape": image_shape}))
    with pytest.raises(UserError, match=rf"^{exported}/preprocess\.json: image_shape .* is not 3,H,W"):
        resolve("infer", [f"--inference_model={exported}", "--val_list=v.txt"])


def _trained_on(folder, data_dir):
    """A checkpoint trained on data_dir's train.txt and val.txt (the lists are written)."""
    os.makedirs(data_dir, exist_ok=True)
    for name in ("train.txt", "val.txt"):
        Path(data_dir, name).write_text("a/1.png 1\n")
    return _checkpoint(folder, data_dir=str(data_dir), train_list=str(Path(data_dir, "train.txt")),
                       val_list=str(Path(data_dir, "val.txt")))


def test_eval_without_data_flags_evaluates_the_checkpoint_s_own_data(in_empty_dir, capsys):
    folder = _trained_on(in_empty_dir / "ckpt", in_empty_dir / "omniglot")
    config = resolve("eval", [f"--pretrained_model={folder}"], digits_dir=in_empty_dir / "digits")
    assert (config.data_dir, config.val_list) == (str(in_empty_dir / "omniglot"),
                                                  str(in_empty_dir / "omniglot" / "val.txt"))
    captured = capsys.readouterr()
    assert f"The checkpoint's own data: --data_dir={in_empty_dir / 'omniglot'}" in captured.out
    assert "WARNING" not in captured.err and not (in_empty_dir / "digits").exists()


@pytest.mark.parametrize("case", ["its lists are gone: the digits fallback", "other data typed"])
def test_eval_on_data_the_checkpoint_was_not_trained_for_is_a_warning_block(in_empty_dir, capsys, case, digits_set):
    folder = _trained_on(in_empty_dir / "ckpt", in_empty_dir / "omniglot")
    flags = [f"--pretrained_model={folder}"]
    if case.startswith("its lists are gone"):
        os.remove(in_empty_dir / "omniglot" / "val.txt")
    else:
        flags += [f"--data_dir={in_empty_dir / 'cars'}", "--val_list=cars.txt"]
    config = resolve("eval", flags, digits_dir=digits_set[0])
    err = capsys.readouterr().err.splitlines()
    assert len(err) >= 5 and all(line.startswith("WARNING: ") for line in err)
    assert "was trained on another data set" in err[1]
    assert f"evaluating  --data_dir={config.data_dir} --val_list={config.val_list}" in "\n".join(err)
    assert ("is not found" in "\n".join(err)) == case.startswith("its lists are gone")


def test_infer_embeds_the_checkpoint_s_own_list_and_typed_data_is_no_warning(in_empty_dir, capsys):
    folder = _trained_on(in_empty_dir / "ckpt", in_empty_dir / "omniglot")
    assert resolve("infer", [f"--pretrained_model={folder}"]).infer_list == str(in_empty_dir / "omniglot" / "val.txt")
    resolve("infer", [f"--pretrained_model={folder}", "--infer_list=photos.txt", f"--data_dir={in_empty_dir}"])
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.parametrize("network", ["exported model", "checkpoint"])
def test_infer_reads_a_typed_list_s_images_from_its_folder_unless_data_dir_is_given(in_empty_dir, capsys, network):
    if network == "exported model":
        exported = in_empty_dir / "exported"
        exported.mkdir()
        for name in ("inference.json", "inference.pdiparams"):
            (exported / name).write_text("")
        (exported / "preprocess.json").write_text(json.dumps({"model": "ResNet18", "image_shape": [3, 32, 32]}))
        flag = f"--inference_model={exported}"
    else:
        flag = f"--pretrained_model={_trained_on(in_empty_dir / 'ckpt', in_empty_dir / 'omniglot')}"
    config = resolve("infer", [flag, "--infer_list=photos/list.txt"])
    assert config.data_dir == str(in_empty_dir / "photos")
    assert f"The images of photos/list.txt are read from its folder {in_empty_dir / 'photos'}" in \
        capsys.readouterr().out
    assert resolve("infer", [flag, "--infer_list=photos/list.txt", "--data_dir=elsewhere"]).data_dir == "elsewhere"
