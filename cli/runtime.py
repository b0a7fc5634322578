"""Process setup that must happen before Paddle is imported: quiet logs, CPU threads and math library.

The scripts call `configure()` once, from `run_cli`, before their `main` imports Paddle.
Whatever the user set in the environment wins; only unset variables are filled in.
"""
import logging
import os
import warnings

from engine.device import usable_cores
from utility.errors import run_main

# Paddle's info/warning noise that would drown the progress lines; errors still show.
_QUIET_WARNINGS = ("No ccache found", "When training, we now always track global mean",
                   "Tensor do not have 'place' interface")


# configure() names here the variables it set (not the user's), for the processes this one starts (cli/relaunch.py).
FILLED_IN = "DML_CPU_SETTINGS_FILLED_IN"


def cpu_vendor(cpuinfo_path="/proc/cpuinfo"):
    """(vendor_id, model name) of the first CPU, or ("", "") where /proc/cpuinfo is unreadable."""
    fields = {}
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break
    except OSError:
        return "", ""
    return fields.get("vendor_id", ""), fields.get("model name", "")


def cpu_settings(vendor):
    """The environment variables that make Paddle's CPU kernels fast on this CPU.

    MKL_DEBUG_CPU_TYPE=5: the MKL bundled with the Paddle 3.3 wheel (2019.0.5) runs a slow SSE2
    path on AMD CPUs without it (a 1024x1024 matmul 47 -> 124 GFLOP/s, train.py ResNet50 64x64
    batch 30 9.5 -> 25 img/s here); newer MKL ignores it. Training reaches the same numbers to
    float32 rounding (tests/test_runtime.py).
    OMP_NUM_THREADS=1 however many cores there are, measured (bench/README-speed.md): a second thread gives
    Paddle's training step nothing (fixed batch, ResNet50 64x64, idle machine: 38 img/s with 1
    thread, 39 with 2, while PyTorch went from 60 to 109), and it costs when the core is busy: in
    train.py, whose image-decoding workers share the cores, 39 img/s with 1 thread against 21 with
    2; under other jobs' load the spin-waiting second thread burnt 2.7x the CPU time per step.
    To use more cores for training, run data-parallel processes (paddle.distributed.launch
    --nproc_per_node N): 2 processes x 1 thread trained at 36-44 img/s.
    """
    settings = {"OMP_NUM_THREADS": "1"}
    if vendor == "AuthenticAMD":
        settings["MKL_DEBUG_CPU_TYPE"] = "5"
    return settings


def configure(environ=None, cpuinfo_path="/proc/cpuinfo", cores=None):
    """Fill in the CPU and logging environment (the user's own values win); return the summary line."""
    environ = os.environ if environ is None else environ
    vendor, model = cpu_vendor(cpuinfo_path)
    cores = cores or usable_cores()
    chosen = cpu_settings(vendor)
    filled_by_parent = set(environ.get(FILLED_IN, "").split(","))  # a relaunched train.py's (cli/relaunch.py)
    yours = {name for name in chosen if name in environ and name not in filled_by_parent}
    for name, value in chosen.items():
        environ.setdefault(name, value)
    environ[FILLED_IN] = ",".join(sorted(set(chosen) - yours))
    environ.setdefault("GLOG_minloglevel", "2")
    quiet_python_warnings()
    parts = [f"{name}={environ[name]}" + (" (yours)" if name in yours else "") for name in chosen]
    return f"CPU: {model or vendor or 'unknown'}, {cores} cores; " + ", ".join(parts)


def quiet_python_warnings():
    for message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # "Could not load library with AVX2 support"


def run_cli(main, argv=None):
    """Set up the process, then run a script's main(argv) with clean exits (utility.errors.run_main).

    main must import Paddle itself (not at module level), so that the CPU settings apply.
    """
    print(configure(), flush=True)
    run_main(main, argv)
