"""Training speed on the CPU: train.py under several process settings, and Paddle against PyTorch.

    python bench/bench_train.py settings [--iters=30] [--rounds=2] [-- train.py flags]
    python bench/bench_train.py torch [--cases=ResNet50:64:32,ResNet50:224:16] [--steps=8] [--rounds=2]
    python bench/bench_train.py profile [--cases=ResNet50:64:30] [--steps=3]

settings: runs train.py itself (the offline digits set unless data flags follow `--`; default
    ResNet50, 64x64, batch 30) under each configuration, the configurations alternating round by
    round, and reports the median img/s of log.jsonl (the first progress window, which includes
    start-up, is left out) and the peak resident memory from `/usr/bin/time -v`:
      plain    OMP_NUM_THREADS=1, MKL_DEBUG_CPU_TYPE unset-equivalent (empty): Paddle's own default
      switch1  MKL_DEBUG_CPU_TYPE=5, OMP_NUM_THREADS=1  (what cli/runtime.py sets on AMD)
      switch2  MKL_DEBUG_CPU_TYPE=5, OMP_NUM_THREADS=<cores>
      mkl2     switch2 + MKL_NUM_THREADS=<cores> (MKL's matrix products on every core too)
      onednn   switch2 + FLAGS_use_onednn=1
      dp2      2 data-parallel processes (paddle.distributed.launch), switch + 1 thread each
torch: the train.py training step (engine.programs.build_train_graph + Executor, triplet loss,
    runtime.configure() settings) against PyTorch on the same architecture, same image size and
    batch, on fixed random batches (no data loading on either side), alternating Paddle and PyTorch
    rounds; prints img/s of each and the ratio Paddle / PyTorch. PyTorch runs from its own
    virtualenv, bench/.torch-venv, created on first use (`--torch_requirement` is what pip installs
    there; PyTorch is never a dependency of the project).
profile: op-level time of the Paddle training step (paddle.profiler), top operators.

Every case runs in a fresh process. The machine's load changes the figures: note `uptime`.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(REPO, "bench", ".torch-venv")
NUM_CLASSES = 100
# What each configuration or thread count sets; the caller's own values of these are replaced.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")
DEFAULT_TRAIN_FLAGS = ["--model=ResNet50", "--image_shape=3,64,64", "--train_batch_size=30",
                       "--loss_name=tripletloss"]


# ----------------------------------------------------------------------------- settings

def cores():
    # engine.device.usable_cores, repeated: the PyTorch venv's worker cannot import the project's packages
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def settings_env(name):
    """Environment of one configuration (on top of the caller's, with the CPU variables replaced)."""
    env = {k: v for k, v in os.environ.items() if k not in (*THREAD_VARIABLES, "FLAGS_use_onednn")}
    # runtime.configure() fills in only unset variables: an empty MKL_DEBUG_CPU_TYPE keeps MKL's default path.
    table = {"plain": {"OMP_NUM_THREADS": "1", "MKL_DEBUG_CPU_TYPE": ""},
             "switch1": {"OMP_NUM_THREADS": "1", "MKL_DEBUG_CPU_TYPE": "5"},
             "switch2": {"OMP_NUM_THREADS": str(cores()), "MKL_DEBUG_CPU_TYPE": "5"},
             "mkl2": {"OMP_NUM_THREADS": str(cores()), "MKL_NUM_THREADS": str(cores()), "MKL_DEBUG_CPU_TYPE": "5"},
             "onednn": {"OMP_NUM_THREADS": str(cores()), "MKL_DEBUG_CPU_TYPE": "5", "FLAGS_use_onednn": "1"},
             "dp2": {"OMP_NUM_THREADS": "1", "MKL_DEBUG_CPU_TYPE": "5"}}
    env.update(table[name])
    return env


def time_command():
    return ["/usr/bin/time", "-v"] if os.path.exists("/usr/bin/time") else []


def peak_rss_mb(stderr_text):
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr_text)
    return int(match.group(1)) / 1024 if match else float("nan")


def run_train(name, iters, flags):
    """(median img/s, peak RSS MB, error line or None) of one train.py run under configuration `name`."""
    with tempfile.TemporaryDirectory() as out:
        train = [os.path.join(REPO, "train.py"), f"--total_iter_num={iters}", "--display_iter_step=5",
                 f"--test_iter_step={iters * 10}", f"--save_iter_step={iters * 10}", f"--model_save_dir={out}",
                 *flags]
        if name == "dp2":
            cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                   "--log_dir", os.path.join(out, "launch"), *train]
        else:
            cmd = [sys.executable, *train, "--cpu_processes=1"]  # train.py would relaunch itself on every core
        proc = subprocess.run(time_command() + cmd, env=settings_env(name), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rss = peak_rss_mb(proc.stderr)
        log = os.path.join(out, "log.jsonl")
        records = []
        if os.path.exists(log):
            from evaluation.plot import read_records  # the project's one log reader: damaged lines skipped

            records = [r for r in read_records(log) if "img_per_s" in r][1:]
        if proc.returncode != 0 or not records:
            lines = [line for line in (proc.stderr + proc.stdout).splitlines()
                     if line.strip() and not line.startswith("\t")]
            # The first exception line is the cause; later ones come from tearing down the data workers.
            error = next((line for line in lines if re.match(r"\w*(Error|Exception)\b", line.strip())),
                         lines[-1] if lines else "no output")
            return float("nan"), rss, f"exit {proc.returncode}: {error.strip()[:160]}"
    return statistics.median(r["img_per_s"] for r in records), rss, None


def compare_settings(opts):
    flags = opts.rest or DEFAULT_TRAIN_FLAGS
    names = opts.configs.split(",")
    print(f"train.py {' '.join(flags)}, {opts.iters} iterations, {cores()} cores, rounds alternate")
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    results = {name: [] for name in names}
    for round_id in range(opts.rounds):
        for name in names:
            if name == "onednn" and round_id > 0 and results[name][0][2]:
                continue  # it crashed once: no need to see it crash again
            rate, rss, error = run_train(name, opts.iters, flags)
            results[name].append((rate, rss, error))
            print(f"round {round_id + 1} {name:8s} {rate:6.1f} img/s  peak RSS {rss:6.0f} MB"
                  + (f"  FAILED {error}" if error else "") + f"  (load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"\n{'config':8s}  {'img/s (median of rounds)':>24s}  {'peak RSS MB':>11s}")
    for name in names:
        rates = [r for r, _, e in results[name] if not e]
        rss = max(m for _, m, _ in results[name])
        shown = f"{statistics.median(rates):.1f}" if rates else "failed"
        print(f"{name:8s}  {shown:>24s}  {rss:11.0f}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


# ----------------------------------------------------------------------------- Paddle worker

def parse_case(text):
    model, size, batch = text.split(":")
    return model, int(size), int(batch)


def loss_for(batch):
    """tripletloss (rows anchor, positive, negative) when the batch holds whole triplets, else
    batchhardtripletloss on a P x 2 batch: both cost next to nothing beside the network."""
    return "tripletloss" if batch % 3 == 0 else "batchhardtripletloss"


def fixed_batch(batch, size, seed=0):
    """A fixed random batch with labels in the layout of loss_for(batch)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, size, size)).astype("float32")
    if loss_for(batch) == "tripletloss":
        labels = np.array([[t, t, t + 1] for t in range(batch // 3)], "int64").ravel() % NUM_CLASSES
    else:
        labels = (np.arange(batch) // 2 % NUM_CLASSES).astype("int64")
    return images, labels


def paddle_worker(opts):
    """Time train.py's training step: the same graph builder, executor and runtime settings."""
    from cli import runtime

    if opts.variant == "onednn-mask":
        os.environ["FLAGS_use_onednn"] = "1"
    setup = runtime.configure()
    import paddle

    from engine import programs

    if opts.variant == "onednn-mask":
        # oneDNN's max-pool gradient crashes static training; max_pool2d with return_mask lowers to
        # max_pool2d_with_index, which trains. Bench-only experiment (models/ keep MaxPool2D).
        def max_pool_with_mask(self, x):
            return paddle.nn.functional.max_pool2d(x, 3, 2, 1, return_mask=True)[0]
        paddle.nn.MaxPool2D.forward = max_pool_with_mask
        setup += ", FLAGS_use_onednn=1 + max_pool2d(return_mask=True)"
    from cli.args import defaults

    model, size, batch = parse_case(opts.case)
    args = defaults("train", model=model, image_shape=(3, size, size), train_batch_size=batch,
                    loss_name=loss_for(batch), samples_each_class=2, total_iter_num=1000)
    paddle.enable_static()
    paddle.seed(0)
    graph = programs.build_train_graph(args, NUM_CLASSES, 1000)
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(graph.startup)
    images, labels = fixed_batch(batch, size)
    feed = {programs.IMAGE: images, programs.LABEL: labels}
    fetch = [graph.fetch["loss_metric"]]

    losses = []

    def step():
        losses.append(round(exe.run(graph.main, feed=feed, fetch_list=fetch)[0].item(), 5))

    if opts.profile:
        return profile_steps(step, opts.steps, setup)
    rate = timed(step, batch, opts.steps)
    print(json.dumps({"img_per_s": rate, "setup": setup, "losses": losses}))


def timed(step, batch, steps, warmup=2):
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def profile_steps(step, steps, setup):
    import paddle.profiler as profiler

    for _ in range(2):
        step()
    os.chdir(tempfile.mkdtemp())  # the profiler leaves a profiler_log/ folder in the working directory
    prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU])
    prof.start()
    for _ in range(steps):
        step()
        prof.step()
    prof.stop()
    print(setup)
    prof.summary(sorted_by=profiler.SortedKeys.CPUTotal, op_detail=False, thread_sep=False, time_unit="ms")


# ----------------------------------------------------------------------------- PyTorch worker

def torch_models():
    """PyTorch definitions of the project's backbones (models/resnet.py, models/se_resnext.py):
    same layers, strides and widths, so that both frameworks do the same arithmetic."""
    from torch import nn

    def conv_bn(cin, cout, k, stride=1, groups=1, relu=True):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)

    class SE(nn.Module):
        def __init__(self, c, r=16):
            super().__init__()
            self.squeeze, self.excite = nn.Linear(c, c // r), nn.Linear(c // r, c)

        def forward(self, x):
            gate = self.excite(self.squeeze(x.mean((2, 3))).relu()).sigmoid()
            return x * gate[:, :, None, None]

    class Block(nn.Module):
        """ResNet-50 bottleneck (expand 4, stride on the 3x3) or SE-ResNeXt block (32 groups, expand 2, SE)."""

        def __init__(self, cin, width, stride, expansion, groups, se):
            super().__init__()
            cout = width * expansion
            self.body = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3, stride, groups),
                                      conv_bn(width, cout, 1, relu=False), *([SE(cout)] if se else []))
            self.shortcut = conv_bn(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else None

        def forward(self, x):
            return (self.body(x) + (x if self.shortcut is None else self.shortcut(x))).relu()

    class Net(nn.Module):
        def __init__(self, widths, expansion, groups, se, num_classes):
            super().__init__()
            layers, cin = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
            for stage, (depth, width) in enumerate(zip((3, 4, 6, 3), widths)):
                for index in range(depth):
                    layers.append(Block(cin, width, 2 if index == 0 and stage > 0 else 1, expansion, groups, se))
                    cin = width * expansion
            self.trunk = nn.Sequential(*layers)
            self.classifier = nn.Linear(cin, num_classes)

        def forward(self, x):
            embedding = self.trunk(x).mean((2, 3))
            return embedding, self.classifier(embedding)

    return {"ResNet50": lambda n: Net((64, 128, 256, 512), 4, 1, False, n),
            "SE_ResNeXt50_32x4d": lambda n: Net((128, 256, 512, 1024), 2, 32, True, n)}


def torch_worker(opts):
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or cores()))
    torch.manual_seed(0)
    model_name, size, batch = parse_case(opts.case)
    net = torch_models()[model_name](NUM_CLASSES).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images, labels = (torch.from_numpy(a) for a in fixed_batch(batch, size))
    same = labels[:, None] == labels[None, :]

    def metric_loss(embedding):
        embedding = torch.nn.functional.normalize(embedding, dim=1)
        if loss_for(batch) == "tripletloss":
            a, p, n = embedding[0::3], embedding[1::3], embedding[2::3]
            return (((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1) + 0.1).clamp(min=0).mean()
        dist = torch.cdist(embedding, embedding)
        hardest_pos = (dist * same).max(1).values
        hardest_neg = (dist + 1e6 * same).min(1).values
        return (hardest_pos - hardest_neg + 0.1).clamp(min=0).mean()

    def step():
        embedding, logits = net(images)
        metric = metric_loss(embedding)
        loss = metric + 0.0 * torch.nn.functional.cross_entropy(logits, labels)  # train.py's alpha=0 branch
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    rate = timed(step, batch, opts.steps)
    print(json.dumps({"img_per_s": rate, "setup": f"torch {torch.__version__}, {torch.get_num_threads()} threads"}))


# ----------------------------------------------------------------------------- comparison

def torch_python(requirement):
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        print(f"creating {VENV} and installing {requirement} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *requirement.split()], check=True)
    return python


def run_worker(python, role, case, steps, env=None):
    proc = subprocess.run([python, os.path.abspath(__file__), role, f"--case={case}", f"--steps={steps}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{role} {case} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_torch(opts):
    python = torch_python(opts.torch_requirement)
    base_env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    thread_counts = opts.threads.split(",") if opts.threads else [""]
    print(f"{cores()} cores, {opts.steps} timed steps after 2 warm-up steps, fixed random batches, "
          f"rounds alternate Paddle / PyTorch; load before {os.getloadavg()[0]:.2f}", flush=True)
    for case in opts.cases.split(","):
        rates = {(role, t): [] for t in thread_counts for role in ("paddle", "torch")}
        for round_id in range(opts.rounds):
            for t in thread_counts:
                env = dict(base_env, **({"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t} if t else {}))
                for role, exe in (("paddle", sys.executable), ("torch", python)):
                    result = run_worker(exe, f"{role}-worker", case, opts.steps, env)
                    rates[role, t].append(result["img_per_s"])
                    print(f"  {case} round {round_id + 1} {role:6s} {result['img_per_s']:6.2f} img/s  "
                          f"[{result['setup']}] (load {os.getloadavg()[0]:.2f})", flush=True)
        for t in thread_counts:
            paddle_rate, torch_rate = statistics.median(rates["paddle", t]), statistics.median(rates["torch", t])
            print(f"{case}{f' {t} threads' if t else ''}: Paddle {paddle_rate:.2f} img/s, "
                  f"PyTorch {torch_rate:.2f} img/s, ratio {paddle_rate / torch_rate:.2f}", flush=True)
    print(f"load after {os.getloadavg()[0]:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["settings", "torch", "profile", "paddle-worker", "torch-worker"])
    parser.add_argument("--iters", type=int, default=30, help="settings: train.py iterations per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", default="plain,switch1,switch2,dp2,onednn", help="settings: which configurations")
    parser.add_argument("--cases", help="MODEL:SIZE:BATCH,... (torch: ResNet50 and SE_ResNeXt50_32x4d at "
                                        "64:32 and 224:16; profile: ResNet50:64:30)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)  # paddle-worker: onednn-mask
    parser.add_argument("--threads", default="", help="torch/profile: thread counts to try on both sides, set as "
                                                      "OMP_NUM_THREADS and MKL_NUM_THREADS (default: "
                                                      "cli.runtime's choice)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per round")
    parser.add_argument("--torch_requirement", default="torch",
                        help="what pip installs into bench/.torch-venv (e.g. a CPU build: 'torch==2.13.0+cpu')")
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    opts = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    opts.rest = rest  # settings: train.py flags, after --
    opts.profile = opts.mode == "profile"
    if opts.cases is None:
        opts.cases = ("ResNet50:64:30" if opts.profile else
                      "ResNet50:64:32,SE_ResNeXt50_32x4d:64:32,ResNet50:224:16,SE_ResNeXt50_32x4d:224:16")
    if opts.mode == "settings":
        compare_settings(opts)
    elif opts.mode == "torch":
        compare_torch(opts)
    elif opts.mode == "profile":
        for case in opts.cases.split(","):
            opts.case = case
            paddle_worker(opts)
    elif opts.mode == "paddle-worker":
        paddle_worker(opts)
    else:
        torch_worker(opts)


if __name__ == "__main__":
    main()
