"""Embedding speed of eval.py's network: the plain Executor against Paddle Inference (oneDNN).

    python bench/bench_eval.py [--checkpoint=DIR] [--cases=32:50,224:10] [--batches=3] [--rounds=2]

For each image size and batch (SIZE:BATCH) it exports the checkpoint as an inference model
(engine.embedder.export, what `infer.py --export_model` runs) and embeds the same fixed random
batches with
  executor    the checkpoint's embedding program run by an Executor (what eval.py ran before)
  predictor   engine.embedder.Embedder on the exported model (Paddle Inference with oneDNN: what
              eval.py, infer.py and train.py's evaluation run)
  onednn      the same predictor configured here by hand (a check of the Embedder's settings)
  bf16        a predictor with enable_onednn_bfloat16() (CPUs with avx512_bf16 / AMX only)
each in a fresh process with cli.runtime's settings, the embedders alternating round by round.
It prints img/s and, against the executor's features, max |difference| / max |feature|.
Without --checkpoint it first makes one: a 2-iteration train.py run, ResNet50 at 32x32, digits data.
Only the network is timed: image decoding (eval.py's reader) is left out.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDERS = ("executor", "predictor", "onednn", "bf16")


def worker_setup():
    from cli import runtime

    return runtime.configure()


def eval_config(checkpoint_dir, size, batch):
    """eval.py's configuration of the checkpoint at this input size and batch."""
    from cli.config import resolve

    return resolve("eval", [f"--pretrained_model={checkpoint_dir}", f"--image_shape=3,{size},{size}",
                            f"--test_batch_size={batch}", "--val_list=unused.txt", "--use_gpu=False"])


def export_worker(opts):
    worker_setup()
    from engine.embedder import checkpoint_program, export

    config = eval_config(opts.checkpoint, opts.size, opts.batch)
    exe, graph = checkpoint_program(config)
    export(exe, graph.program, graph.image, graph.embedding, opts.model_dir, config)


class ExecutorEmbedder:
    """The checkpoint's embedding program run by an Executor."""

    def __init__(self, config):
        from engine.embedder import checkpoint_program

        self.exe, self.graph = checkpoint_program(config)

    def __call__(self, images):
        from engine.programs import IMAGE

        (out,) = self.exe.run(self.graph.program, feed={IMAGE: images}, fetch_list=[self.graph.embedding])
        return out


def make_predictor(model_dir, kind):
    """The Embedder as eval.py uses it, or one with the oneDNN option under test."""
    import paddle.inference as inference

    from engine.embedder import EXPORT_PREFIX, Embedder, PaddlePredictor, inference_threads

    embedder = Embedder(model_dir, use_gpu=False)
    if kind == "predictor":
        return embedder
    prefix = os.path.join(model_dir, EXPORT_PREFIX)
    config = inference.Config(prefix + ".json", prefix + ".pdiparams")
    config.disable_glog_info()
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(inference_threads())  # as many as the Embedder
    config.enable_onednn()
    if kind == "bf16":
        config.enable_onednn_bfloat16()
    embedder.run = PaddlePredictor(config)
    return embedder


def embed_worker(opts):
    import numpy as np

    setup = worker_setup()
    if opts.kind == "executor":
        embedder = ExecutorEmbedder(eval_config(opts.checkpoint, opts.size, opts.batch))
    else:
        embedder = make_predictor(opts.model_dir, opts.kind)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((opts.batch, 3, opts.size, opts.size)).astype("float32")
               for _ in range(opts.batches)]
    features = embedder(batches[0])  # warm-up; also the features compared between embedders
    start = time.perf_counter()
    for images in batches:
        embedder(images)
    rate = opts.batch * opts.batches / (time.perf_counter() - start)
    np.save(opts.features, np.asarray(features, dtype="float32"))
    print(json.dumps({"img_per_s": rate, "setup": setup}))


def run(args, env=None):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def make_checkpoint(out):
    print("making a checkpoint: train.py, 2 iterations, ResNet50 32x32", flush=True)
    subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--model=ResNet50", "--image_shape=3,32,32",
                    "--train_batch_size=30", "--total_iter_num=2", "--test_iter_step=1000",
                    f"--model_save_dir={out}"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return os.path.join(out, "ResNet50", "2")


def compare(opts, work):
    checkpoint = opts.checkpoint or make_checkpoint(os.path.join(work, "train"))
    print(f"checkpoint {checkpoint}; {opts.batches} timed batches after 1 warm-up batch; "
          f"load before {os.getloadavg()[0]:.2f}", flush=True)
    kinds = opts.embedders.split(",")
    for case in opts.cases.split(","):
        size, batch = map(int, case.split(":"))
        model_dir = os.path.join(work, f"export{size}")
        common = [f"--checkpoint={checkpoint}", f"--size={size}", f"--batch={batch}", f"--model_dir={model_dir}"]
        run(["export-worker", *common])
        rates = {kind: [] for kind in kinds}
        features = {}
        for round_id in range(opts.rounds):
            for kind in kinds:
                path = os.path.join(work, f"{kind}{size}.npy")
                try:
                    out = run(["embed-worker", *common, f"--kind={kind}", f"--batches={opts.batches}",
                               f"--features={path}"])
                except RuntimeError as err:
                    last = str(err).strip().splitlines()[-1]
                    print(f"  {size}px batch {batch} {kind:9s} FAILED: {last[:160]}", flush=True)
                    continue
                result = json.loads(out.strip().splitlines()[-1])
                rates[kind].append(result["img_per_s"])
                features[kind] = path
                print(f"  {size}px batch {batch} round {round_id + 1} {kind:9s} {result['img_per_s']:7.1f} img/s "
                      f"[{result['setup']}] (load {os.getloadavg()[0]:.2f})", flush=True)
        report(size, batch, kinds, rates, features)
    print(f"load after {os.getloadavg()[0]:.2f}")


def report(size, batch, kinds, rates, features):
    import numpy as np

    reference = np.load(features["executor"]) if "executor" in features else None
    print(f"{size}x{size}, batch {batch}:")
    for kind in kinds:
        if not rates[kind]:
            print(f"  {kind:9s}  failed")
            continue
        line = f"  {kind:9s} {statistics.median(rates[kind]):7.1f} img/s"
        if reference is not None and kind != "executor":
            diff = np.abs(np.load(features[kind]) - reference).max() / np.abs(reference).max()
            line += f"   max |diff| / max |feature| = {diff:.2e}"
        print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="compare", choices=["compare", "export-worker", "embed-worker"])
    parser.add_argument("--checkpoint", help="a train.py checkpoint directory (default: make one)")
    parser.add_argument("--cases", default="32:50,224:10", help="SIZE:BATCH,... to time")
    parser.add_argument("--embedders", default=",".join(EMBEDDERS))
    parser.add_argument("--batches", type=int, default=3, help="timed batches per run")
    parser.add_argument("--rounds", type=int, default=2)
    for name in ("size", "batch"):
        parser.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    for name in ("model_dir", "kind", "features"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.mode == "export-worker":
        export_worker(opts)
    elif opts.mode == "embed-worker":
        embed_worker(opts)
    else:
        with tempfile.TemporaryDirectory() as work:
            compare(opts, work)


if __name__ == "__main__":
    main()
