"""Dump embeddings of an image list, and export or run an inference model.

    python infer.py --model=ResNet50 --pretrained_model=output/ResNet50/latest --output_dir=OUT
    python infer.py --pretrained_model=output/ResNet50/latest --export_model=exported
    python infer.py --inference_model=exported --infer_list=LIST --output_dir=OUT
    python infer.py --pretrained_model=output/ResNet50/latest --export_onnx=model.onnx --quantize=int8
    python infer.py --inference_model=model.int8.onnx --engine=onnxruntime --infer_list=LIST

Writes OUT/features.npy (float32, one row per list line, list order), OUT/labels.npy,
OUT/paths.txt and OUT/fingerprint.json (the model's fingerprint: `index.py build --features OUT`
checks it against the gallery's model), and OUT/uncertainty.npy (float32 sigma^2 per row) when the
model predicts it (trained with --uncertainty True). The list may have labels or not (one path per line).
"""
import shutil
import tempfile

import numpy as np

import reader
from cli.args import print_arguments
from cli.config import check_model_and_loss, resolve
from cli.runtime import run_cli

NO_LABEL = -1


def main(argv=None):
    config = resolve("infer", argv)
    check_model_and_loss(config)
    print_arguments(config)
    image_list = reader.read_image_list(config.infer_list, config.data_dir, require_labels=False,
                                        with_camera=config.with_camera)

    from engine.dump import write_dump
    from engine.embedder import embed_shards, exchange_folder, share_loader

    with share_loader(config, image_list, skip_bad=config.skip_bad_images) as loader:  # before the embedder
        embedder = _make_embedder(config)
        embedded = embed_shards(embedder, loader, exchange_folder(config.output_dir, "infer"),
                                with_uncertainty=embedder.predicts_uncertainty)
    features, rows = embedded[:2]
    uncertainty = embedded[2] if embedder.predicts_uncertainty else None
    if features is None:
        return  # another process of paddle.distributed.launch: device 0 writes the dump
    labels = image_list.labels[rows] if image_list.labels is not None else np.full(len(rows), NO_LABEL, "int64")
    paths = [image_list.paths[i] for i in rows]
    write_dump(config.output_dir, features, labels, paths, embedder.fingerprint, uncertainty)
    if config.print_features:
        for i, feature in enumerate(features):
            print(f"Test-{i}-feature: {feature}")


def _make_embedder(config):
    """The embedder of --inference_model or of the checkpoint, after writing the exports asked for
    (--export_model, --export_onnx: device 0 alone writes them)."""
    from engine.embedder import Embedder, checkpoint_program, config_embedder, export
    from engine.programs import distributed_env

    exporting = (config.export_model or config.export_onnx) and distributed_env()[1] == 0
    if not exporting:
        return config_embedder(config)
    if config.inference_model:
        _export_onnx(config, config.inference_model)
        return Embedder(config.inference_model, config.use_gpu, config.engine)
    exe, graph = checkpoint_program(config)
    folder = config.export_model or tempfile.mkdtemp(prefix="export-")
    try:
        export(exe, graph.program, graph.image, graph.embedding, folder, config, graph.uncertainty)
        if config.export_model:
            print(f"Exported the inference model to {config.export_model}", flush=True)
        if config.export_onnx:
            _export_onnx(config, folder)
        embedder = Embedder(folder, config.use_gpu, config.engine)
    finally:
        if not config.export_model:
            shutil.rmtree(folder, ignore_errors=True)  # the engine holds the parameters in memory
    if not config.export_model:
        embedder.name = f"checkpoint {config.pretrained_model}"
    return embedder


def _export_onnx(config, model_dir):
    from engine.onnx_export import description_path, write_onnx_exports

    if not config.export_onnx:
        return
    for path in write_onnx_exports(config, model_dir):
        print(f"Exported the ONNX model to {path}, its preprocessing to {description_path(path)}", flush=True)


def run():
    """The console entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    run()
