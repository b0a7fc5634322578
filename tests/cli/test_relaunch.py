"""cli/relaunch.py: how many CPU processes train.py runs on (the relaunch itself: tests/scripts/test_train.py)."""
import pytest

from cli import relaunch
from utility.errors import UserError

PK2 = {"batch_size": 96, "layout": "pk", "samples_each_class": 2}  # train.py's default batch, a P x K loss


def count(requested=None, *, cores=2, use_gpu=False, launched=False, **batch):
    return relaunch.process_count(requested, cores=cores, use_gpu=use_gpu, launched=launched, **{**PK2, **batch})


def test_by_default_one_process_per_core_up_to_the_cap():
    assert count(cores=1) == 1
    assert count(cores=2) == 2
    assert count(cores=4) == 4
    assert count(cores=64) == relaunch.MAX_PROCESSES == 8


def test_by_default_the_most_processes_the_batch_splits_into():
    assert count(cores=4, batch_size=12, samples_each_class=4) == 3  # 4 per process; 4 processes: 3 each
    assert count(cores=3, batch_size=96, layout="triplet", samples_each_class=1) == 2  # 32 is no whole triplets
    assert count(cores=2, batch_size=63) == 1  # odd: no split at all
    assert count(cores=3, batch_size=63, layout="shuffle", samples_each_class=1) == 3


def test_one_process_on_a_gpu_inside_a_launched_process_or_when_asked():
    assert count(cores=8, use_gpu=True) == 1
    assert count(cores=8, launched=True) == 1
    assert count(2, launched=True) == 1  # the relaunched processes themselves
    assert count(1, cores=8) == 1


def test_a_count_asked_for_is_kept_when_the_batch_splits():
    assert count(2, cores=1) == 2
    assert count(12, cores=2) == 12  # beyond the cores and the cap: the user's choice


@pytest.mark.parametrize("requested, settings, message", [
    (0, {}, "--cpu_processes must be 1 or more, got 0"),
    (5, {}, r"--cpu_processes 5: --train_batch_size 96 must be a positive multiple of the 5 device\(s\)"),
    (4, {"batch_size": 12, "samples_each_class": 4}, "--cpu_processes 4: .* multiple of --samples_each_class 4"),
    (2, {"use_gpu": True}, "--cpu_processes is for training on the CPU"),
])
def test_impossible_counts_are_user_errors(requested, settings, message):
    with pytest.raises(UserError, match=message):
        count(requested, **settings)


def test_the_configuration_and_the_launchers_environment_decide(monkeypatch):
    from cli.args import defaults
    from engine import device

    monkeypatch.setattr(device, "usable_cores", lambda: 2)
    config = defaults("train", use_gpu=False)  # tripletloss: 96 = 2 x 48 images of whole triplets
    assert relaunch.processes_for(config, environ={}) == 2
    assert relaunch.processes_for(config, environ={"PADDLE_TRAINER_ID": "0", "PADDLE_TRAINERS_NUM": "1"}) == 1
    assert relaunch.processes_for(defaults("train", use_gpu=False, cpu_processes=1), environ={}) == 1


def test_a_count_the_batch_cannot_split_stops_train_py_before_any_work(tiny_dataset, tmp_path):
    from train_runs import run_train

    with pytest.raises(UserError, match="--cpu_processes 5: --train_batch_size 12"):
        run_train(tiny_dataset, str(tmp_path), "--cpu_processes=5")
    assert not list(tmp_path.iterdir())
