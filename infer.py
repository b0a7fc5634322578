"""Dump embeddings of an image list, and export or run an inference model.

    python infer.py --model=ResNet50 --pretrained_model=output/ResNet50/latest --output_dir=OUT
    python infer.py --pretrained_model=output/ResNet50/latest --export_model=exported
    python infer.py --inference_model=exported --infer_list=LIST --output_dir=OUT

Writes OUT/features.npy (float32, one row per list line, list order), OUT/labels.npy
and OUT/paths.txt. The list may have labels or not (one path per line).
"""
import os

import numpy as np

import data
import reader
from engine import checkpoint
from utility import parse_args, print_arguments, run_cli
from engine.embedder import CheckpointEmbedder, InferenceEmbedder, adopt_checkpoint_settings, embed_list
from utility.errors import UserError

NO_LABEL = -1


def main(argv=None):
    args = parse_args("infer", argv)
    embedder = _make_embedder(args)
    if args.infer_list is None:
        data.use_default_dataset_if_needed(args)
        args.infer_list = args.val_list
    print_arguments(args)

    if args.export_model:
        embedder.export(args.export_model, args)
    image_list = reader.read_image_list(args.infer_list, args.data_dir, require_labels=False)
    features, rows = embed_list(embedder, image_list, args, skip_bad=args.skip_bad_images)
    labels = image_list.labels[rows] if image_list.labels is not None else np.full(len(rows), NO_LABEL, "int64")
    paths = [image_list.paths[i] for i in rows]
    save_dump(args.output_dir, features, labels, paths)
    if args.print_features:
        for i, feature in enumerate(features):
            print(f"Test-{i}-feature: {feature}")


def _make_embedder(args):
    if args.inference_model:
        if args.pretrained_model or args.export_model:
            raise UserError("--inference_model runs an exported model: give neither --pretrained_model "
                            "nor --export_model with it")
        embedder = InferenceEmbedder(args.inference_model, use_gpu=bool(args.use_gpu))
        args.image_shape = tuple(embedder.info["image_shape"])
        return embedder
    directory = checkpoint.resolve(args.pretrained_model)
    if directory is None:
        raise UserError("give --pretrained_model=DIR (a checkpoint) or --inference_model=DIR (an exported model)")
    adopt_checkpoint_settings(args, directory)
    return CheckpointEmbedder(args, directory)


def save_dump(out_dir, features, labels, paths):
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "features.npy"), features.astype("float32"))
    np.save(os.path.join(out_dir, "labels.npy"), labels.astype("int64"))
    with open(os.path.join(out_dir, "paths.txt"), "w") as f:
        f.writelines(path + "\n" for path in paths)
    print(f"Wrote {len(paths)} features of {features.shape[1]} dims to {out_dir}/"
          "features.npy, labels.npy, paths.txt", flush=True)


if __name__ == "__main__":
    run_cli(main)
