"""engine/trainer.py pieces: the save folder belongs to one run, strict-JSON logs, divergence stops training."""
import json
import math
import os

import numpy as np
import pytest

import train
from cli.args import defaults
from engine import evaluate
from engine.trainer import LOG_FILE, RunLog, Schedule, claim_save_dir
from reader.samplers import batches_of_one_pass
from utility.errors import UserError


def test_a_new_run_does_not_write_over_another(tmp_path):
    config = defaults("train", model_save_dir=str(tmp_path), model="ResNet18")
    claim_save_dir(config, resuming=False)  # empty: fine
    (tmp_path / LOG_FILE).write_text("{}\n")
    with pytest.raises(UserError, match=r"holds another run .*log.jsonl\): choose a new --model_save_dir, or pass "
                                        r"--overwrite=True"):
        claim_save_dir(config, resuming=False)  # a log but no checkpoint: nothing to resume
    claim_save_dir(config, resuming=True)
    claim_save_dir(defaults("train", model_save_dir=str(tmp_path), overwrite=True), resuming=False)


@pytest.mark.parametrize("earlier_model, resumable", [("ResNet18", True), ("ResNet50", False)])
def test_resuming_is_offered_only_for_a_checkpoint_of_the_same_network(tmp_path, earlier_model, resumable):
    (tmp_path / earlier_model).mkdir()
    os.symlink("150", tmp_path / earlier_model / "latest")
    with pytest.raises(UserError) as refused:
        claim_save_dir(defaults("train", model_save_dir=str(tmp_path), model="ResNet18"), resuming=False)
    message = str(refused.value)
    assert f"{earlier_model}/latest" in message and "--overwrite=True" in message
    assert ("--checkpoint=" in message) == resumable


def test_the_log_is_strict_json(tmp_path):
    log = RunLog(str(tmp_path / "sub" / LOG_FILE), fresh=True)
    log.write({"iter": 1, "loss_cls": math.nan, "acc1": math.inf, "lr": 0.1})
    log.close()
    text = (tmp_path / "sub" / LOG_FILE).read_text()
    assert json.loads(text) == {"iter": 1, "loss_cls": None, "acc1": None, "lr": 0.1}
    assert "NaN" not in text and "Infinity" not in text


def test_the_log_is_not_written_through_a_planted_link(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep\n")
    os.symlink(target, tmp_path / LOG_FILE)
    with pytest.raises(UserError, match="symbolic link"):
        RunLog(str(tmp_path / LOG_FILE), fresh=True)
    assert target.read_text() == "keep\n"


def test_file_system_errors_are_one_line(tmp_path, capsys):
    from utility.errors import run_main

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda argv: open(blocker / "log.jsonl", "w"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: [Errno 20] Not a directory: '{blocker / 'log.jsonl'}'"]


def test_a_position_at_the_end_of_a_pass_is_the_start_of_the_next():
    from engine.trainer import Position

    old = Position(iteration=150, pass_id=9, batch=15)  # how earlier versions saved the end of a pass
    old.settle(15)
    assert old == Position(iteration=150, pass_id=10, batch=0)
    moving = Position(iteration=13, pass_id=0, batch=13)
    moving.advance(15)
    moving.advance(15)
    assert moving == Position(iteration=15, pass_id=1, batch=0)


def test_epochs_become_iterations():
    assert Schedule.of(defaults("train", num_epochs=3), 7) == Schedule(21, 7, 7)
    schedule = Schedule.of(defaults("train", total_iter_num=10, test_iter_step=4, save_iter_step=5), 7)
    assert [i for i in range(1, 11) if schedule.evaluates_after(i)] == [4, 8, 10]
    assert [i for i in range(1, 11) if schedule.saves_after(i)] == [5, 10]


def test_a_diverging_run_stops_and_never_saves_non_finite_parameters(tiny_dataset, tmp_path, capsys):
    data_dir, train_list, val_list = tiny_dataset
    with pytest.raises(UserError, match=r"training diverged at iteration \d+: .*nan.*last good checkpoint"):
        train.main([f"--data_dir={data_dir}", f"--train_list={train_list}", f"--val_list={val_list}",
                    "--model=ResNet18", "--image_shape=3,32,32", "--train_batch_size=12", "--loss_name=softmax",
                    "--lr=1e12", "--total_iter_num=20", "--save_iter_step=1", "--test_iter_step=100",
                    "--num_workers=0", "--cpu_processes=1", f"--model_save_dir={tmp_path}"])
    from engine.checkpoint import load_checkpoint_state
    latest = os.path.realpath(tmp_path / "ResNet18" / "latest")
    state = load_checkpoint_state(latest)
    assert all(np.isfinite(value).all() for value in state.values())
    records = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert records[-1]["diverged"] is True


def test_test_loss_lays_the_evaluation_set_out_as_the_loss_trains():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6) + 100, 5)
    features = rng.normal(size=(len(labels), 8)).astype("float32")
    for rows in batches_of_one_pass(labels, "pk", 12, 3, seed=0):
        assert sorted(np.unique(labels[rows], return_counts=True)[1]) == [3] * 4
    config = defaults("eval", loss_name="emlloss", samples_each_class=3, test_batch_size=12)
    assert evaluate.test_loss(config, features, labels) > 0
    assert math.isnan(evaluate.test_loss(defaults("eval", loss_name="softmax"), features, labels))


@pytest.mark.usefixtures("no_recall")
def test_skip_batch_undoes_non_finite_steps_and_counts_them(tiny_dataset, tmp_path, capsys):
    from engine.checkpoint import load_checkpoint_state

    data_dir, train_list, val_list = tiny_dataset
    # The learning rate that diverges in test_a_diverging_run_stops...: here its NaN steps are undone.
    train.main([f"--data_dir={data_dir}", f"--train_list={train_list}", f"--val_list={val_list}",
                "--model=ResNet18", "--image_shape=3,32,32", "--train_batch_size=12", "--loss_name=softmax",
                "--lr=1e12", "--total_iter_num=3", "--test_iter_step=100", "--num_workers=0",
                "--nan_policy=skip_batch", "--cpu_processes=1",
                f"--model_save_dir={tmp_path}"])  # iterations 1 and 2 go non-finite
    out = capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    skipped = [r["iter"] for r in records if r.get("skipped")]
    assert len(skipped) >= 2
    assert [r["skipped_total"] for r in records if r.get("skipped")] == list(range(1, len(skipped) + 1))
    assert f"Skipped the step of iteration {skipped[0]}: non-finite" in out
    state = load_checkpoint_state(str(tmp_path / "ResNet18" / "3"))
    assert all(np.isfinite(value).all() for value in state.values())
