"""Running train.py in tests, and reading what a run leaves: its printed lines, log.jsonl, checkpoints."""
import json
import os
import re
import shutil
import subprocess
import sys

import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The classifier's figures are printed only when there is a classifier (the groups are then "").
PROGRESS = re.compile(r"^Pass (\d+), trainbatch (\d+), lr (\S+), loss_metric (\S+), (?:loss_cls (\S+), "
                      r"acc1 (\S+), acc5 (\S+), )?time (\S+) sec, (\S+) img/s, eta \d+:\d\d:\d\d$", re.M)
END_PASS = re.compile(r"^End pass (\d+), train_loss_metric (\S+), (?:train_loss_cls (\S+), train_acc1 (\S+), "
                      r"train_acc5 (\S+), )?test_recall (\S+)$", re.M)


def run_train(tiny_dataset, out_dir, *extra, model="ResNet18", loss="tripletloss", batch=12, iters=2):
    """train.main on the tiny data set (conftest.py) at 32x32, one progress line per step, in this process
    (--cpu_processes=1: tests stay single-process; a later --cpu_processes in `extra` wins)."""
    data_dir, train_list, val_list = tiny_dataset
    argv = [f"--model={model}", f"--loss_name={loss}", f"--data_dir={data_dir}", f"--train_list={train_list}",
            f"--val_list={val_list}", "--image_shape=3,32,32", f"--train_batch_size={batch}",
            f"--total_iter_num={iters}", "--num_workers=0", "--display_iter_step=1", "--test_batch_size=16",
            f"--model_save_dir={out_dir}", "--cpu_processes=1", *extra]
    train.main(argv)


def run_train_script(args, **kwargs):
    """train.py as a process of its own, from the repository unless cwd= says otherwise: its CompletedProcess,
    output captured as text."""
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], capture_output=True, text=True,
                          check=False, cwd=kwargs.pop("cwd", REPO), **kwargs)


def skip_validation_embedding(patch):
    """For train.py runs whose Recall@1 no check reads (patch: a pytest MonkeyPatch): validation reports 0.0
    without embedding the list, which saves a Paddle Inference start-up (about 1 s) per evaluation. The probe
    check, log, plot and saves still run."""
    from engine.trainer import Validator

    patch.setattr(Validator, "recall_at_1", lambda *args: 0.0)


def copy_run(save_dir, out_dir):
    """A copy of a run's save folder (checkpoints, `latest`, log.jsonl) to resume or damage."""
    shutil.copytree(save_dir, out_dir, symlinks=True, dirs_exist_ok=True)


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def step_records(out_dir):
    """The per-step records of log.jsonl."""
    return [record for record in read_log(out_dir) if "loss_metric" in record]


def final_parameters(checkpoint_dir):
    from engine.checkpoint import load_checkpoint_state
    return load_checkpoint_state(checkpoint_dir)


def read_state(checkpoint_dir):
    with open(os.path.join(checkpoint_dir, "state.json")) as f:
        return json.load(f)
