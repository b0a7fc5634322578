"""Process setup of cli/runtime.py: CPU vendor, thread count, the MKL switch, and that the
fast settings train to the same numbers as Paddle's plain defaults."""
import os
import subprocess
import sys

import numpy as np
import pytest

from cli import runtime

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
"""
INTEL = AMD.replace("AuthenticAMD", "GenuineIntel").replace("AMD EPYC 7B13", "Intel(R) Xeon(R) Gold 6148")


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return str(path)
    return write


def test_amd_gets_the_mkl_switch_and_one_thread(cpuinfo):
    environ = {}
    line = runtime.configure(environ, cpuinfo(AMD), cores=2)
    assert environ["MKL_DEBUG_CPU_TYPE"] == "5"
    assert environ["OMP_NUM_THREADS"] == "1"  # measured: a second thread does not speed Paddle up
    assert line == "CPU: AMD EPYC 7B13, 2 cores; OMP_NUM_THREADS=1, MKL_DEBUG_CPU_TYPE=5"


def test_intel_gets_threads_but_no_mkl_switch(cpuinfo):
    environ = {}
    line = runtime.configure(environ, cpuinfo(INTEL), cores=4)
    assert "MKL_DEBUG_CPU_TYPE" not in environ
    assert environ["OMP_NUM_THREADS"] == "1"
    assert line == "CPU: Intel(R) Xeon(R) Gold 6148, 4 cores; OMP_NUM_THREADS=1"


def test_the_users_own_settings_win_and_are_marked(cpuinfo):
    environ = {"OMP_NUM_THREADS": "2", "MKL_DEBUG_CPU_TYPE": ""}
    line = runtime.configure(environ, cpuinfo(AMD), cores=2)
    assert environ["OMP_NUM_THREADS"] == "2" and environ["MKL_DEBUG_CPU_TYPE"] == ""
    assert line.endswith("; OMP_NUM_THREADS=2 (yours), MKL_DEBUG_CPU_TYPE= (yours)")
    # A value the user set is theirs even when it equals what configure() would pick.
    environ = {"OMP_NUM_THREADS": "1"}
    assert runtime.configure(environ, cpuinfo(AMD), cores=2).endswith(
        "; OMP_NUM_THREADS=1 (yours), MKL_DEBUG_CPU_TYPE=5")


def test_a_process_started_by_a_configured_one_knows_which_settings_were_the_users(cpuinfo):
    """train.py relaunched on several processes (cli/relaunch.py): they inherit the parent's environment."""
    parent = {"OMP_NUM_THREADS": "2"}
    runtime.configure(parent, cpuinfo(AMD), cores=2)
    child = dict(parent)
    assert runtime.configure(child, cpuinfo(AMD), cores=2).endswith(
        "; OMP_NUM_THREADS=2 (yours), MKL_DEBUG_CPU_TYPE=5")


def test_cores_come_from_the_affinity_mask(cpuinfo, monkeypatch):
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this platform")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5})
    line = runtime.configure({}, cpuinfo(AMD))
    assert line.startswith("CPU: AMD EPYC 7B13, 3 cores;")


def test_unreadable_cpuinfo_means_no_switch(tmp_path):
    environ = {}
    line = runtime.configure(environ, str(tmp_path / "missing"), cores=1)
    assert environ == {"OMP_NUM_THREADS": "1", "GLOG_minloglevel": "2", runtime.FILLED_IN: "OMP_NUM_THREADS"}
    assert line == "CPU: unknown, 1 cores; OMP_NUM_THREADS=1"


# A few static training steps of train.py's graph on fixed data; saves the losses and parameters.
_TRAIN_STEPS = """
import sys
import numpy as np
import paddle
from engine import programs
from cli.args import defaults

args = defaults("train", model="ResNet18", image_shape=(3, 24, 24), train_batch_size=9,
                loss_name="tripletloss", alpha=0.5, lr=0.05, total_iter_num=3)
paddle.enable_static()
paddle.seed(0)
graph = programs.build_train_graph(args, 4, 3)
exe = paddle.static.Executor(paddle.CPUPlace())
exe.run(graph.startup)
scope = paddle.static.global_scope()
names = [p.name for p in graph.main.global_block().all_parameters()]
start = {"init/" + name: np.array(scope.find_var(name).get_tensor()) for name in names}
rng = np.random.default_rng(1)
losses = []
for _ in range(3):
    images = rng.standard_normal((9, 3, 24, 24)).astype("float32")
    labels = np.array([0, 0, 1, 2, 2, 3, 1, 1, 0], "int64")
    metric, cls = exe.run(graph.main, feed={"image": images, "label": labels},
                          fetch_list=[graph.fetch["loss_metric"], graph.fetch["loss_cls"]])
    losses.append([metric.item(), cls.item()])
params = {name: np.array(scope.find_var(name).get_tensor()) for name in names}
np.savez(sys.argv[1], losses=np.array(losses), **start, **params)
"""


def _train(tmp_path, name, **env):
    out = str(tmp_path / f"{name}.npz")
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    environ.update(env, PYTHONPATH=REPO, GLOG_minloglevel="2")
    subprocess.run([sys.executable, "-c", _TRAIN_STEPS, out], env=environ, cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return np.load(out)


def test_fast_settings_train_like_the_plain_defaults(tmp_path):
    """MKL's AVX2 path with 2 threads trains like the plain one-thread path, up to float32 rounding.

    Sums are taken in another order, and three steps through batch norm on 9 images amplify
    that, so the parameters are compared by how far they moved: the two runs' updates must
    agree to 0.1 % over the network and to 0.5 % in every tensor (measured here: 0.01 % and
    0.07 %; a gradient off by 1 %, or another batch, is far outside).
    """
    fast = _train(tmp_path, "fast", OMP_NUM_THREADS="2", MKL_DEBUG_CPU_TYPE="5")
    plain = _train(tmp_path, "plain", OMP_NUM_THREADS="1", MKL_DEBUG_CPU_TYPE="")
    assert set(fast.files) == set(plain.files)
    names = [name for name in plain.files if name != "losses" and not name.startswith("init/")]
    assert len(names) > 40
    np.testing.assert_allclose(fast["losses"], plain["losses"], rtol=2e-4)
    for name in names:
        np.testing.assert_array_equal(fast["init/" + name], plain["init/" + name])  # same start (seed)

    def moved(run, name):
        return run[name] - plain["init/" + name]

    update = np.concatenate([moved(plain, name).ravel() for name in names])
    difference = np.concatenate([(fast[name] - plain[name]).ravel() for name in names])
    assert np.linalg.norm(update) > 0.1  # the steps did train
    assert np.linalg.norm(difference) <= 1e-3 * np.linalg.norm(update)
    for name in names:
        assert np.linalg.norm(fast[name] - plain[name]) <= 5e-3 * np.linalg.norm(moved(plain, name)) + 1e-7, name
