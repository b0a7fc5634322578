"""train.py end to end on 32x32 images: every loss, SE-ResNeXt, logs, checkpoints, resume, finetune, errors."""
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from train_runs import (END_PASS, PROGRESS, REPO, final_parameters, read_log, read_state, run_train,
                        run_train_script)

import train
from utility.errors import UserError

# One loss per batch layout (each loss's static training step is tested in tests/losses/): shuffled
# triplets, P x K (--samples_each_class), npairs' fixed 2 images per class, a classifier alone; and each
# optimizer (its steps are tested in tests/engine/test_optimizers.py).
LOSS_CASES = [
    ("tripletloss", []),
    ("quadrupletloss", ["--samples_each_class=3"]),
    ("npairsloss", ["--optimizer=adam"]),
    ("softmax", ["--label_smoothing=0.1", "--optimizer=adamw"]),
]


@pytest.mark.parametrize("loss, extra", LOSS_CASES)
def test_each_loss_trains_logs_and_saves(tiny_dataset, tmp_path, capsys, request, loss, extra):
    if loss != "quadrupletloss":  # one case (with a classifier in the program) embeds the validation list
        request.getfixturevalue("no_recall")
    run_train(tiny_dataset, str(tmp_path), *extra, "--alpha=0.5", loss=loss)
    out = capsys.readouterr().out
    steps = PROGRESS.findall(out)
    assert [(int(p), int(b)) for p, b, *_ in steps] == [(0, 0), (0, 1)]
    values = np.array([[float(v) for v in step[2:7]] for step in steps])
    assert np.isfinite(values).all()
    if loss == "softmax":
        assert (values[:, 1] == 0).all()  # no metric loss
    else:
        assert (values[:, 1] > 0).any()
    (end,) = END_PASS.findall(out)
    assert 0.0 <= float(end[-1]) <= 1.0

    records = read_log(str(tmp_path))
    per_batch = [r for r in records if "loss_metric" in r]
    assert len(per_batch) == 2
    assert {"pass", "iter", "lr", "loss_metric", "loss_cls", "acc1", "acc5", "img_per_s", "reader_s",
            "step_s", "processes"} <= set(per_batch[0])
    assert per_batch[0]["processes"] == 1
    assert [r["iter"] for r in per_batch] == [0, 1]
    assert [r["test_recall"] for r in records if "test_recall" in r] == [pytest.approx(float(end[-1]), abs=1e-5)]

    saved = os.path.join(str(tmp_path), "ResNet18")
    assert os.path.realpath(os.path.join(saved, "latest")) == os.path.realpath(os.path.join(saved, "2"))
    with open(os.path.join(saved, "2", "state.json")) as f:
        state = json.load(f)
    assert state["position"] == {"iteration": 2, "pass_id": 0, "batch": 2}
    assert state["classes"] == list(range(1, 9))
    assert state["args"]["loss_name"] == loss
    optimizer = next((flag.split("=")[1] for flag in extra if flag.startswith("--optimizer=")), "momentum")
    assert state["args"]["optimizer"] == optimizer
    with safe_open(os.path.join(saved, "2", "optimizer.safetensors"), "np") as slots:
        kept = "".join(slots.keys())
    assert ("_moment1_" in kept and "_beta2_pow_acc_" in kept) == (optimizer != "momentum")
    assert ("_velocity_" in kept) == (optimizer == "momentum")


@pytest.mark.usefixtures("no_recall")
def test_se_resnext_trains(tiny_dataset, tmp_path, capsys):
    # The losses do not depend on the backbone: one loss with the classifier branch is enough here.
    run_train(tiny_dataset, str(tmp_path), "--alpha=0.5", "--samples_each_class=3", model="SE_ResNeXt50_32x4d",
              loss="quadrupletloss", batch=6, iters=1)
    steps = PROGRESS.findall(capsys.readouterr().out)
    assert len(steps) == 1
    assert np.isfinite([[float(v) for v in step[2:7]] for step in steps]).all()
    assert os.path.isdir(os.path.join(str(tmp_path), "SE_ResNeXt50_32x4d", "1"))


def test_an_untrained_classifier_is_neither_built_nor_reported(trained):
    run = trained["save_dir"]  # a tripletloss run with --alpha 0: no gradient for a classifier
    args = read_state(f"{run}/ResNet18/2")["args"]
    assert (args["loss_name"], args["alpha"]) == ("tripletloss", 0)
    steps = PROGRESS.findall(trained["printed"])
    assert [step[4:7] for step in steps] == [("", "", "")] * 2
    assert float(steps[0][3]) > 0
    records = read_log(run)
    assert all(r["loss_cls"] is None and r["acc1"] is None for r in records if "loss_metric" in r)
    assert [r["train_acc5"] for r in records if "test_recall" in r] == [None]
    assert not [name for name in final_parameters(f"{run}/ResNet18/2") if "classifier" in name]


@pytest.mark.usefixtures("no_recall")
def test_epochs_mode_saves_each_pass(tiny_dataset, tmp_path, capsys):
    data_dir, train_list, val_list = tiny_dataset
    train.main([f"--data_dir={data_dir}", f"--train_list={train_list}", f"--val_list={val_list}",
                "--model=ResNet18", "--image_shape=3,32,32", "--train_batch_size=24", "--num_epochs=2",
                "--num_workers=0", "--cpu_processes=1", f"--model_save_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert [int(e[0]) for e in END_PASS.findall(out)] == [0, 1]
    per_pass = int(re.search(r"Training (\d+) iterations \((\d+) per pass\)", out).group(2))
    assert re.search(rf"Training {2 * per_pass} iterations", out)
    # One naming scheme: checkpoints are named by iteration, one after every pass.
    assert sorted(os.listdir(tmp_path / "ResNet18"), key=str) == sorted([str(per_pass), str(2 * per_pass), "best",
                                                                         "latest"])


@pytest.mark.usefixtures("no_recall")
def test_resume_equals_uninterrupted_training(tiny_dataset, tmp_path, capsys):
    # 3 iterations straight (saving at 2), then resume the iteration-2 checkpoint for the last one.
    # The LR drops at iteration 2: a scheduler that did not come back would still give 0.05.
    common = ["--loss_name=quadrupletloss", "--samples_each_class=3", "--lr_steps=2", "--save_iter_step=2",
              "--test_iter_step=100", "--lr=0.05", "--alpha=0.5"]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run_train(tiny_dataset, straight, *common, iters=3)
    run_train(tiny_dataset, resumed, *common, f"--checkpoint={straight}/ResNet18/2", iters=3)
    capsys.readouterr()

    first = [r for r in read_log(straight) if "loss_metric" in r]
    second = [r for r in read_log(resumed) if "loss_metric" in r]
    assert [r["iter"] for r in second] == [2]
    assert [r["lr"] for r in first] == pytest.approx([0.05, 0.05, 0.005])
    assert [r["lr"] for r in second] == pytest.approx([0.005])
    # Bit for bit: the same batches, parameters, optimizer state and LR, and one thread count.
    assert [(r["loss_metric"], r["loss_cls"]) for r in second] == [(r["loss_metric"], r["loss_cls"]) for r in first[2:]]
    want = final_parameters(f"{straight}/ResNet18/3")
    got = final_parameters(f"{resumed}/ResNet18/3")
    for name in ("conv1_weights", "bn_conv1_mean", "res5b_branch2b_weights", "classifier_fc_weights"):
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.usefixtures("no_recall")
def test_finetune_across_losses_and_class_counts(tiny_dataset, tmp_path, capsys):
    data_dir, train_list, _ = tiny_dataset
    pretrain = str(tmp_path / "softmax")
    run_train(tiny_dataset, pretrain, loss="softmax", iters=1)
    fewer_classes = tmp_path / "fewer.txt"
    with open(train_list) as f:
        fewer_classes.write_text("".join(line for line in f if int(line.split()[1]) <= 4))
    capsys.readouterr()
    run_train((data_dir, str(fewer_classes), tiny_dataset[2]), str(tmp_path / "triplet"),
              f"--pretrained_model={pretrain}/ResNet18/latest", "--alpha=0.5", loss="tripletloss")
    out = capsys.readouterr().out
    loaded = re.search(r"Loaded (\d+) of (\d+) parameters", out)
    assert loaded and int(loaded.group(1)) == int(loaded.group(2)) - 2
    assert re.search(r"Skipped 2 with another shape: classifier_fc_offset \(8,\) -> \(4,\), "
                     r"classifier_fc_weights \(512, 8\) -> \(512, 4\)", out)


def test_resume_on_other_classes_is_refused(tiny_dataset, trained, tmp_path):
    data_dir, _, val_list = tiny_dataset
    with pytest.raises(UserError, match="other classes"):
        run_train((data_dir, val_list, val_list), str(tmp_path), f"--checkpoint={trained['checkpoint']}",
                  "--embedding_size=16")


@pytest.mark.parametrize("extra, message", [
    (["--model=ResNet51"], "unknown --model ResNet51; known: ResNet18"),
    (["--loss_name=contrastive"], "unknown --loss_name contrastive"),
    (["--train_batch_size=10"], "multiple of 3"),
    (["--loss_name=emlloss", "--train_batch_size=12", "--samples_each_class=5"], "multiple of --samples_each_class 5"),
    (["--use_gpu=True"], "built without CUDA"),
    (["--checkpoint=/no/such/dir"], "does not exist"),
])
def test_bad_combinations_stop_before_work(tiny_dataset, tmp_path, extra, message):
    with pytest.raises(UserError, match=message):
        run_train(tiny_dataset, str(tmp_path), *extra)
    assert not os.path.exists(tmp_path / "log.jsonl")


def test_missing_list_is_one_clean_line(tmp_path):
    result = run_train_script(["--train_list=/nowhere/train.txt", "--val_list=/nowhere/val.txt", "--cpu_processes=1"],
                     cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [l for l in result.stderr.strip().splitlines()
                                                    if l.startswith("error: ")]
    assert "/nowhere/train.txt" in result.stderr


@pytest.mark.usefixtures("no_recall")
def test_ctrl_c_saves_a_checkpoint_that_resumes(tiny_dataset, tmp_path, capsys):
    data_dir, train_list, val_list = tiny_dataset
    args = [f"--data_dir={data_dir}", f"--train_list={train_list}", f"--val_list={val_list}", "--model=ResNet18",
            "--image_shape=3,32,32", "--train_batch_size=12", "--total_iter_num=100000", "--num_workers=2",
            "--display_iter_step=1", "--cpu_processes=1", f"--model_save_dir={tmp_path}"]
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("Pass 0, trainbatch 1,"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    saved = re.search(r"Interrupted: saved (\S+); resume with --checkpoint=(\S+)", out)
    assert saved, out
    with open(os.path.join(saved.group(1), "state.json")) as f:
        position = json.load(f)["position"]
    assert position["iteration"] >= 2
    assert os.path.realpath(os.path.join(tmp_path, "ResNet18", "latest")) == os.path.realpath(saved.group(1))
    assert not [name for name in os.listdir(tmp_path / "ResNet18") if name.startswith(".tmp")]
    # The interrupted run resumes from where it stopped (in this process: only the interrupt needs its own).
    run_train(tiny_dataset, str(tmp_path), f"--checkpoint={saved.group(2)}", iters=position["iteration"] + 1)
    resumed = capsys.readouterr().out
    assert f"Resumed from {os.path.realpath(saved.group(1))} at iteration {position['iteration']}" in resumed
    assert [(int(m[0]), int(m[1])) for m in PROGRESS.findall(resumed)] == [(position["pass_id"], position["batch"])]
