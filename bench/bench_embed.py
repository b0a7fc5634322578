"""Embedding speed end to end, image files -> features, per engine, model, input size and precision.

    python bench/bench_embed.py [--models=ResNet18,ResNet50,MobileNetV3_large] [--sizes=64,224]
                                [--engines=paddle,onnxruntime] [--precisions=fp32,int8] [--rounds=2]
                                [--images=500] [--batch=50] [--workers=2]
                                [--list=LIST --data_dir=DIR] [--torch=/work/venv-torch/bin/python]

Each case is one pass over the image list as infer.py makes it: reader.TestLoader (decoding and the
evaluation preprocessing in --workers processes, batches of --batch) feeding engine.embedder.Embedder,
in a fresh process set up as the scripts are (cli/runtime.py); img/s counts the whole pass, the
engine warmed up first on a batch of zeros. Cases:
  paddle        Paddle Inference with oneDNN (the default on a GPU)
  onnxruntime   onnxruntime on the paddle2onnx export (fp32; the default on the CPU), or on its int8 quantization (int8)
  reader        the reader alone, no network: the most any engine can reach with these workers
  torch         PyTorch in its own environment (--torch, a Python with torch installed; never a project
                dependency): the same ResNet50 in plain torch (bench_train.py's definition), eval mode,
                the same reader, torch.set_num_threads(cores)
The networks are freshly initialised (speed does not depend on the weights) and exported once per model
and size; int8 is calibrated on --calibration images of the list. Rounds alternate over every case.
Without --list, --images synthetic 500x375 JPEGs (bench_reader.py's) are written to a temporary folder.
The 1-minute load average is printed before and after each case: compare figures only at similar load.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.dirname(os.path.abspath(__file__))


def load():
    return f"{os.getloadavg()[0]:.2f}"


# ----------------------------------------------------------------------------- preparation (main process)

def image_list(opts, folder):
    if opts.list:
        return os.path.abspath(opts.list), os.path.abspath(opts.data_dir)
    from bench_reader import write_jpegs  # the sibling bench script (bench/ is this script's sys.path[0])

    return write_jpegs(folder, opts.images), folder


def prepare(model, size, list_path, data_dir, folder, opts):
    """Export a fresh `model` at size x size for Paddle, as ONNX and as int8 ONNX; the paths by precision."""
    out = os.path.join(folder, f"{model}-{size}")
    code = ("import sys; from bench_embed import export_worker; export_worker(*sys.argv[1:])")
    subprocess.run([sys.executable, "-c", code, model, str(size), out, list_path, data_dir, str(opts.calibration),
                    str(opts.embedding_size)], check=True, cwd=BENCH, env=worker_env())
    return {"paddle": out, "fp32": os.path.join(out, "model.onnx"), "int8": os.path.join(out, "model.int8.onnx")}


def export_worker(model, size, out, list_path, data_dir, calibration, embedding_size):
    from cli.runtime import configure

    configure()
    import paddle

    import reader
    from cli.args import defaults
    from engine import onnx_export, programs
    from engine.embedder import export, test_loader

    config = defaults("infer", model=model, image_shape=(3, int(size), int(size)), use_gpu=False,
                      embedding_size=int(embedding_size), num_workers=0)
    paddle.enable_static()
    graph = programs.build_embed_graph(config)
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(graph.startup)
    export(exe, graph.program, graph.image, graph.embedding, out, config)
    onnx_path = os.path.join(out, "model.onnx")
    onnx_export.export_onnx(out, onnx_path)
    images = reader.read_image_list(list_path, data_dir, require_labels=False)
    rows = onnx_export.calibration_rows(len(images.paths), int(calibration))
    with test_loader(config, images, skip_bad=False, rows=rows) as loader:
        onnx_export.quantize_int8(onnx_path, onnx_export.calibration_batches(loader))


def worker_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, BENCH] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


# ----------------------------------------------------------------------------- one timed pass (fresh process)

def embed_worker(case):
    """One pass over the list by `case` (a dict, see cases()); prints {"img_per_s", "images", "setup"} as JSON."""
    from cli.runtime import configure

    configure()  # as infer.py: before Paddle or onnxruntime loads
    import reader
    from engine.embedder import Embedder

    images = reader.read_image_list(case["list"], case["data_dir"], require_labels=False)
    loader = reader.TestLoader(images, image_shape=(3, case["size"], case["size"]), batch_size=case["batch"],
                               num_workers=case["workers"])
    with loader:  # workers forked before the engine starts its threads, as infer.py does
        if case["engine"] == "reader":
            run, setup = (lambda batch: batch), f"{case['workers']} workers"
        else:
            embedder = Embedder(case["model_path"], use_gpu=False, engine=case["engine"])
            run, setup = embedder, f"{case['engine']} {case['precision']}"
        print(json.dumps(timed_pass(loader, run, setup, case)))


def torch_worker(case):
    """The same pass with PyTorch's ResNet50 (bench_train.py's plain-torch definition), in the torch environment."""
    import torch
    from bench_train import torch_models

    import reader
    from engine.device import usable_cores

    torch.set_num_threads(usable_cores())
    torch.manual_seed(0)
    net = torch_models()["ResNet50"](1).eval()
    images = reader.read_image_list(case["list"], case["data_dir"], require_labels=False)
    loader = reader.TestLoader(images, image_shape=(3, case["size"], case["size"]), batch_size=case["batch"],
                               num_workers=case["workers"])

    def run(batch):
        with torch.inference_mode():
            return net(torch.from_numpy(batch))[0].numpy()

    with loader:
        print(json.dumps(timed_pass(loader, run, f"torch {torch.__version__}, {torch.get_num_threads()} threads",
                                    case)))


def timed_pass(loader, run, setup, case):
    """img/s of one whole pass over the loader, the engine warmed up first on a batch of zeros (its lazy
    initialisation is start-up, not throughput); the reader starts cold, as in infer.py."""
    run(np.zeros((case["batch"], 3, case["size"], case["size"]), np.float32))
    start, count = time.perf_counter(), 0
    for images, _ in loader.batches():
        run(images)
        count += len(images)
    return {"img_per_s": count / (time.perf_counter() - start), "images": count, "setup": setup}


# ----------------------------------------------------------------------------- the table

def cases(opts, exports, list_path, data_dir):
    common = {"list": list_path, "data_dir": data_dir, "batch": opts.batch, "workers": opts.workers}
    found = []
    for size in opts.sizes:
        found.append({**common, "model": "-", "size": size, "engine": "reader", "precision": "-"})
        for model in opts.models:
            for engine in opts.engines:
                for precision in opts.precisions:
                    if engine == "paddle" and precision == "int8":
                        continue  # Paddle Inference runs the float32 export only
                    path = exports[model, size]["paddle" if engine == "paddle" else precision]
                    found.append({**common, "model": model, "size": size, "engine": engine,
                                  "precision": precision, "model_path": path})
        if opts.torch:
            found.append({**common, "model": "ResNet50", "size": size, "engine": "torch", "precision": "fp32"})
    return found


def run_case(case, opts):
    role, python = ("torch_worker", opts.torch) if case["engine"] == "torch" else ("embed_worker", sys.executable)
    env = worker_env()
    if case["engine"] == "torch":  # the project's reader needs OpenCV, which only this environment has
        env["BENCH_EXTRA_SITE"] = next(p for p in sys.path if p.endswith("site-packages"))
    code = ("import json, os, sys; sys.path += [p for p in [os.environ.get('BENCH_EXTRA_SITE')] if p]; "
            f"from bench_embed import {role}; {role}(json.loads(sys.argv[1]))")
    proc = subprocess.run([python, "-c", code, json.dumps(case)], capture_output=True, text=True, cwd=BENCH, env=env,
                          check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="ResNet18,ResNet50,MobileNetV3_large", type=lambda t: t.split(","))
    parser.add_argument("--sizes", default="64,224", type=lambda t: [int(s) for s in t.split(",")])
    parser.add_argument("--engines", default="paddle,onnxruntime", type=lambda t: t.split(","))
    parser.add_argument("--precisions", default="fp32,int8", type=lambda t: t.split(","))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=500,
                        help="synthetic JPEGs to write (without --list)")
    parser.add_argument("--list", help="an image list to embed instead (paths relative to --data_dir)")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--batch", type=int, default=50, help="images per batch (infer.py's --test_batch_size)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (infer.py's --num_workers)")
    parser.add_argument("--calibration", type=int, default=100, help="images the int8 ranges are calibrated on")
    parser.add_argument("--embedding_size", type=int, default=0, help="0: the pooled feature, as --embedding_size")
    parser.add_argument("--torch", help="a Python with PyTorch (e.g. /work/venv-torch/bin/python): add its ResNet50")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as folder:
        list_path, data_dir = image_list(opts, folder)
        print(f"preparing exports (load {load()})", flush=True)
        exports = {(model, size): prepare(model, size, list_path, data_dir, folder, opts)
                   for model in opts.models for size in opts.sizes}
        table = cases(opts, exports, list_path, data_dir)
        results = {}
        for round_index in range(opts.rounds):
            for case in table:
                before = load()
                result = run_case(case, opts)
                key = (case["size"], case["model"], case["engine"], case["precision"])
                results.setdefault(key, []).append(result.get("img_per_s"))
                figure = (f"{result['img_per_s']:8.1f} img/s over {result['images']} images [{result['setup']}]"
                          if "img_per_s" in result else f"FAILED {result['error']}")
                print(f"round {round_index + 1}  {case['size']:>3} px  {case['model']:<18} {case['engine']:<12} "
                      f"{case['precision']:<5} {figure}  (load {before} -> {load()})", flush=True)
        print("\n| size | model | engine | precision | img/s (rounds) |\n|---|---|---|---|---|")
        for (size, model, engine, precision), rates in results.items():
            shown = " / ".join("failed" if rate is None else f"{rate:.1f}" for rate in rates)
            print(f"| {size} | {model} | {engine} | {precision} | {shown} |")


if __name__ == "__main__":
    main()
