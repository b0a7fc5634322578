"""Training throughput of train.py itself, under several thread settings.

    python bench/bench_train.py --threads=1,2 -- --model=ResNet50 --image_shape=3,32,32 --train_batch_size=60

Runs train.py (offline digits set unless data flags are given after `--`) for --iters iterations per
setting, with OMP_NUM_THREADS and MKL_NUM_THREADS set to each value, and reports the median img/s
of log.jsonl (the first display window, which includes start-up, is left out) and the share of the
step spent waiting for data (reader_s).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(threads, iters, extra):
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        cmd = [sys.executable, os.path.join(REPO, "train.py"), f"--total_iter_num={iters}", "--display_iter_step=5",
               f"--test_iter_step={iters * 10}", f"--save_iter_step={iters * 10}", f"--model_save_dir={out}", *extra]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        with open(os.path.join(out, "log.jsonl")) as f:
            records = [r for r in map(json.loads, f) if "img_per_s" in r][1:]
    return (statistics.median(r["img_per_s"] for r in records),
            statistics.median(r["reader_s"] / max(r["reader_s"] + r["step_s"], 1e-9) for r in records))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="OMP/MKL thread counts to try")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("train_flags", nargs="*", help="flags for train.py, after --")
    bench = parser.parse_args()
    print(f"train.py {' '.join(bench.train_flags)}, {bench.iters} iterations, {os.cpu_count()} cores")
    print(f"{'threads':>7}  {'img/s':>7}  {'waiting for data':>16}")
    for threads in bench.threads.split(","):
        rate, waiting = run(int(threads), bench.iters, bench.train_flags)
        print(f"{threads:>7}  {rate:>7.1f}  {waiting:>15.0%}")


if __name__ == "__main__":
    main()
