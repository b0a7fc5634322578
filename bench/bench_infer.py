"""Embedding throughput: the checkpoint path (static program + Executor) against the exported
model run by Paddle Inference, as infer.py runs them.

    python bench/bench_infer.py --model=ResNet50 --image_shape=3,224,224 --batch_sizes=1,16

Random-initialised parameters (speed does not depend on their values); inputs are random.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utility import parse_args  # noqa: E402
from utility.args import image_shape, int_list  # noqa: E402


def images_per_second(run_batch, batch, repeats):
    run_batch(batch)  # warm-up: the first run builds kernels and caches
    start = time.perf_counter()
    for _ in range(repeats):
        run_batch(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ResNet50")
    parser.add_argument("--image_shape", type=image_shape, default=(3, 224, 224))
    parser.add_argument("--batch_sizes", type=int_list, default=[1, 16])
    parser.add_argument("--images", type=int, default=32, help="images timed per measurement")
    bench = parser.parse_args()

    import paddle

    from engine.embedder import CheckpointEmbedder, InferenceEmbedder

    args = parse_args("infer", [f"--model={bench.model}", "--image_shape=" + ",".join(map(str, bench.image_shape)),
                                "--use_gpu=False"])
    with tempfile.TemporaryDirectory() as tmp:
        paddle.enable_static()
        paddle.seed(0)
        from engine.programs import build_embed_graph
        graph = build_embed_graph(args)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(graph.startup)
        paddle.static.save(graph.program, os.path.join(tmp, "model"))
        executor = CheckpointEmbedder(args, tmp)
        executor.export(os.path.join(tmp, "exported"), args)
        predictor = InferenceEmbedder(os.path.join(tmp, "exported"), use_gpu=False)

        print(f"{bench.model} at {bench.image_shape[1]}x{bench.image_shape[2]}, {os.cpu_count()} cores, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        print(f"{'batch':>5}  {'Executor img/s':>14}  {'Paddle Inference img/s':>22}  max |diff| / max |feature|")
        rng = np.random.default_rng(0)
        for size in bench.batch_sizes:
            batch = rng.standard_normal((size, *bench.image_shape)).astype("float32")
            repeats = max(1, bench.images // size)
            slow = images_per_second(executor, batch, repeats)
            fast = images_per_second(predictor, batch, repeats)
            want = executor(batch)
            diff = np.abs(want - predictor(batch)).max() / np.abs(want).max()
            print(f"{size:>5}  {slow:>14.1f}  {fast:>22.1f}  {diff:.2e}")


if __name__ == "__main__":
    main()
