"""cli/relaunch.py: how many CPU processes train.py runs on, and train.py relaunching itself on two."""
import json
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
from train_runs import END_PASS, PROGRESS, run_train_script

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


# A stand-in for paddle.distributed.launch: it starts "process 0" (PADDLE_TRAINER_ID=0, writing to the log file
# given) in its own session, as the launcher does, and exits with its status. Process 0 exits 130 on SIGINT.
FAKE_LAUNCHER = r"""
import os, subprocess, sys
process_0 = '''
import signal, sys, time
def interrupted(signum, frame):
    print("error: not really, an error line", flush=True)
    print("process 0 saved", end="", flush=True)
    sys.exit(130)
signal.signal(signal.SIGINT, interrupted)
print("CPU: the line the parent printed too", flush=True)
print("warning: a setting the parent warned of too", file=sys.stderr, flush=True)
print("-----------  Configuration Arguments -----------", flush=True)
print("======================= Modified FLAGS detected =======================", file=sys.stderr, flush=True)
print("FLAGS(name='FLAGS_enable_pir_in_executor', current_value=True, default_value=False)", file=sys.stderr)
print("=======================================================================", file=sys.stderr, flush=True)
print("warning: skipping unreadable image x.jpg", file=sys.stderr, flush=True)
print("process 0 started", flush=True)
time.sleep(20)
'''
with open(sys.argv[1], "a") as log:
    worker = subprocess.Popen([sys.executable, "-c", process_0], env={**os.environ, "PADDLE_TRAINER_ID": "0"},
                              stdout=log, stderr=log, start_new_session=True)
sys.exit(worker.wait())
"""


@pytest.mark.skipif(not os.path.isdir(f"/proc/{os.getpid()}/task"), reason="finds process 0 through Linux's /proc")
def test_process_0s_new_lines_are_shown_and_ctrl_c_goes_to_it(tmp_path, capsys):
    leader_log = tmp_path / "workerlog.0"
    leader_log.write_text("an earlier run's line\n")  # the launcher appends

    def press_ctrl_c_once_started():
        deadline = time.time() + 20
        while "process 0 started" not in leader_log.read_text() and time.time() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)  # as the terminal does: to this process, not to the launcher's session

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    threading.Thread(target=press_ctrl_c_once_started, daemon=True).start()
    status = relaunch.run_launcher([sys.executable, "-c", FAKE_LAUNCHER, str(leader_log)], str(leader_log),
                                   str(tmp_path / "launcher.log"))
    assert status == 130
    printed = capsys.readouterr()
    assert printed.out == "-----------  Configuration Arguments -----------\nprocess 0 started\nprocess 0 saved\n"
    assert printed.err == "warning: skipping unreadable image x.jpg\nerror: not really, an error line\n"
    assert signal.getsignal(signal.SIGINT) is before  # this process's own handler is back


def test_two_cpu_processes_relaunch_through_paddle_distributed_launch(tiny_dataset, tmp_path):
    data_dir, train_list, val_list = tiny_dataset
    result = run_train_script([f"--data_dir={data_dir}", f"--train_list={train_list}", f"--val_list={val_list}",
                      "--model=ResNet18", "--image_shape=3,32,32", "--loss_name=emlloss", "--samples_each_class=3",
                      "--train_batch_size=12", "--total_iter_num=2", "--cpu_processes=2",
                      "--dac_clusters=2",  # divide and conquer: device 0 clusters, device 1 reads its assignment
                      "--xbm_size=9", "--gather_embeddings=True",  # other devices' rows and a memory per device
                      "--num_workers=0", "--display_iter_step=1", f"--model_save_dir={tmp_path / 'out'}"],
                     timeout=300, env={name: value for name, value in os.environ.items()
                                       if name not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "(yours)" not in result.stdout  # the CPU settings train.py chose are not passed on as the user's
    assert result.stdout.count("CPU: ") == 1  # process 0's start-up lines repeat train.py's: left to its log
    logs = tmp_path / "out" / "launch_logs"
    assert (f"Training on 2 CPU processes through paddle.distributed.launch (--cpu_processes 1 for one); "
            f"every process's output goes to {logs}") in result.stdout
    # Process 0's lines on the console as they come, the others' in their log only.
    assert len(PROGRESS.findall(result.stdout)) == 2 and len(END_PASS.findall(result.stdout)) == 1
    assert not PROGRESS.findall((logs / "workerlog.1").read_text())
    assert "Divide and conquer, pass 0: 2 clusters of" in result.stdout
    # Device 0 saves every device's memory ring (each device restores its own on resume).
    from engine.xbm import CrossBatchMemory
    with open(tmp_path / "out" / "ResNet18" / "2" / "state.json") as f:
        state = json.load(f)["xbm"]
    memory = CrossBatchMemory(9, state["dim"], world_size=2)
    memory.restore(state)
    rings = [memory.contents(rank) for rank in range(2)]
    assert all((labels != -1).all() and np.isfinite(features).all() for features, labels in rings)
    assert not np.array_equal(rings[0][0], rings[1][0])
    assert os.path.isdir(tmp_path / "out" / "ResNet18" / "2")
