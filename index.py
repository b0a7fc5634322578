"""Build and change a gallery index: the embeddings of a set of images, searchable by search.py and serve.py.

    python index.py build --pretrained_model output/ResNet50/latest --gallery_dir photos --index_dir gallery
    python index.py build --model_dir exported --gallery_list gallery.txt --data_dir data --index_dir gallery
    python index.py build --model_dir exported --features infer_output --data_dir data --index_dir gallery
    python index.py add --index_dir gallery --gallery_dir photos        (embeds only the images not yet in it)
    python index.py remove --index_dir gallery --ids 3,17   (or --list paths.txt)
    python index.py info --index_dir gallery

The index folder holds a copy of the model, so search.py and serve.py need only --index_dir.
--gallery_dir takes a folder of class subfolders (label = folder name); --gallery_list a list file
(`path LABEL` lines, paths relative to --data_dir); --features the dump of infer.py (also under
paddle.distributed.launch), whose model fingerprint must be the index's. A checkpoint
(--pretrained_model) is exported into the index folder with the settings of its training run, as
infer.py does; further infer.py flags (e.g. --model, --embedding_size) may follow for a checkpoint
without them.
"""
import argparse
import json
import os
import shutil

import numpy as np

from utility.errors import UserError

DEFAULT_BATCH_SIZE = 32


def main(argv=None):
    args, extra = _parser().parse_known_args(argv)
    if extra and not (args.command == "build" and args.pretrained_model):
        raise UserError(f"unrecognized arguments: {' '.join(extra)}")
    {"build": build, "add": add, "remove": remove, "info": info}[args.command](args, extra)


def _parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    # No abbreviations: infer.py's --model after a build's --pretrained_model is not --model_dir.
    build_parser = commands.add_parser("build", help="embed a gallery into a new index folder", allow_abbrev=False)
    add_parser = commands.add_parser("add", help="embed and add the images not yet in the gallery", allow_abbrev=False)
    remove_parser = commands.add_parser("remove", help="remove items by id or by path", allow_abbrev=False)
    info_parser = commands.add_parser("info", help="print the index's settings and size", allow_abbrev=False)
    for sub in (build_parser, add_parser, remove_parser, info_parser):
        sub.add_argument("--index_dir", required=True, help="the index folder")
    for sub in (build_parser, add_parser):
        source = sub.add_argument_group("the gallery images (one of)")
        source.add_argument("--gallery_dir", help="a folder of class subfolders (label = subfolder name)")
        source.add_argument("--gallery_list", help="a list file of `path LABEL` lines (paths relative to --data_dir)")
        source.add_argument("--features", help="a dump folder of infer.py (features.npy, labels.npy, paths.txt, "
                                               "fingerprint.json)")
        sub.add_argument("--data_dir", default="", help="folder the list's (or the dump's) paths are relative to")
        sub.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="images embedded at a time")
        sub.add_argument("--num_workers", type=int, default=2, help="image-decoding processes")
        sub.add_argument("--skip_bad_images", action="store_true", help="leave unreadable images out (warned)")
    model = build_parser.add_argument_group("the model (one of)")
    model.add_argument("--model_dir", help="an exported model (infer.py --export_model)")
    model.add_argument("--pretrained_model", help="a training checkpoint, exported into the index folder")
    build_parser.add_argument("--backend", default="faiss", choices=("faiss", "milvus"))
    build_parser.add_argument("--index_type", help="a faiss index_factory string (default: Flat up to 100k items, "
                                                   "IVF with 8-bit codes beyond)")
    build_parser.add_argument("--search_params", help="faiss search parameters, e.g. nprobe=64 or efSearch=128")
    build_parser.add_argument("--milvus_uri", help="milvus-lite file (default INDEX_DIR/milvus.db) or "
                                                   "http://host:19530 for a Milvus server")
    remove_parser.add_argument("--ids", help="comma-separated item ids")
    remove_parser.add_argument("--list", help="a list file whose images (paths relative to --data_dir) are removed")
    remove_parser.add_argument("--data_dir", default="", help="folder the list's paths are relative to")
    return parser


# ---- build ---------------------------------------------------------------------------------
def build(args, extra):
    from retrieval.gallery import MODEL_DIR, Gallery

    if bool(args.model_dir) == bool(args.pretrained_model):
        raise UserError("build needs the model: --model_dir EXPORTED or --pretrained_model CHECKPOINT")
    _check_new_index_dir(args.index_dir)
    parent = os.path.dirname(os.path.abspath(args.index_dir))
    os.makedirs(parent, exist_ok=True)
    building = os.path.join(parent, f".{os.path.basename(os.path.abspath(args.index_dir))}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        model_dir = os.path.join(building, MODEL_DIR)
        if args.model_dir:
            _copy_model(args.model_dir, model_dir)
        else:
            _export_checkpoint(args.pretrained_model, extra, _source_name(args), model_dir)
        fingerprint, info = _model_identity(model_dir)
        features, paths, labels, data_dir = _gallery_embeddings(args, model_dir, fingerprint, info)
        gallery = Gallery.create(building, dim=features.shape[1], fingerprint=fingerprint, model_info=info,
                                 data_dir=data_dir, backend=args.backend, index_type=args.index_type,
                                 search_params=args.search_params, milvus_uri=args.milvus_uri,
                                 expected_items=len(paths))
        gallery.add(features, paths, labels)
        stats = gallery.stats()
        gallery.close()
        _replace_folder(building, args.index_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(f"Built {args.index_dir}: {stats['items']} items, {stats['dim']}-d, {stats['backend']} "
          f"{stats['index_type']}, model fingerprint {stats['fingerprint']}", flush=True)


def _check_new_index_dir(index_dir):
    if os.path.exists(index_dir) and (not os.path.isdir(index_dir) or os.listdir(index_dir)):
        raise UserError(f"{index_dir} exists and is not empty: add to it with `index.py add`, or give a new "
                        f"--index_dir (or delete the old one)")


def _replace_folder(building, index_dir):
    """Move the finished index folder into place (an empty folder there is replaced)."""
    _check_new_index_dir(index_dir)
    if os.path.isdir(index_dir):
        os.rmdir(index_dir)
    os.rename(building, index_dir)


def _copy_model(model_dir, out_dir):
    from engine.embedder import EXPORT_INFO, EXPORT_PREFIX, read_export_info

    read_export_info(model_dir)  # a UserError when it is not an exported model
    os.makedirs(out_dir)
    for name in (EXPORT_PREFIX + ".json", EXPORT_PREFIX + ".pdiparams", EXPORT_INFO):
        shutil.copy2(os.path.join(model_dir, name), os.path.join(out_dir, name))


def _export_checkpoint(checkpoint, extra, source, out_dir):
    """Export the checkpoint with its training run's settings (as infer.py resolves them) into out_dir."""
    from cli.config import check_model_and_loss, resolve
    from engine.embedder import checkpoint_program, export

    # --infer_list names what will be embedded; without it infer.py's configuration falls back on a data set.
    config = resolve("infer", [f"--pretrained_model={checkpoint}", f"--infer_list={source}", *extra])
    check_model_and_loss(config)
    exe, graph = checkpoint_program(config)
    export(exe, graph.program, graph.image, graph.embedding, out_dir, config)
    import paddle

    paddle.disable_static()
    print(f"Exported {checkpoint} into the index folder", flush=True)


def _model_identity(model_dir):
    from engine.embedder import model_fingerprint, read_export_info

    info = read_export_info(model_dir)
    return model_fingerprint(model_dir), {name: info.get(name) for name in
                                          ("model", "embedding_size", "image_shape", "eval_resize", "ink_crop")}


def _source_name(args):
    sources = [s for s in (args.gallery_dir, args.gallery_list, args.features) if s]
    if len(sources) != 1:
        raise UserError("give the gallery images with one of --gallery_dir, --gallery_list or --features")
    return sources[0]


# ---- the gallery's images and their embeddings ------------------------------------------------
def _gallery_embeddings(args, model_dir, fingerprint, info, known_paths=frozenset()):
    """(features [n, D], paths, labels, data_dir) of the images named by the arguments, less known_paths."""
    _source_name(args)
    if args.features:
        features, paths, labels, data_dir = _read_dump(args.features, args.data_dir, fingerprint,
                                                       info["embedding_size"])
        keep = [i for i, path in enumerate(paths) if os.path.abspath(path) not in known_paths]
        return features[keep], [paths[i] for i in keep], [labels[i] for i in keep], data_dir
    if args.gallery_dir:
        from data.folder import class_images

        data_dir = args.gallery_dir
        found = class_images(data_dir)
        paths, labels = [os.path.join(data_dir, p) for p, _ in found], [name for _, name in found]
    else:
        import reader

        data_dir = args.data_dir
        image_list = reader.read_image_list(args.gallery_list, data_dir)
        paths, labels = image_list.paths, image_list.labels.tolist()
    new = [i for i, path in enumerate(paths) if os.path.abspath(path) not in known_paths]
    if known_paths:
        print(f"{len(new)} new images ({len(paths) - len(new)} already in the gallery)", flush=True)
    paths, labels = [paths[i] for i in new], [labels[i] for i in new]
    if not paths:
        return np.zeros((0, info["embedding_size"]), np.float32), [], [], data_dir or "."
    features, rows = _embed(paths, model_dir, args)
    return features, [paths[i] for i in rows], [labels[i] for i in rows], data_dir or "."


def _embed(paths, model_dir, args):
    """Embeddings of image files by the exported model, with its preprocessing; (features, kept rows)."""
    import reader
    from engine.embedder import Embedder, embed_list, read_export_info

    info = read_export_info(model_dir)
    image_list = reader.ImageList(paths, None, None, None, "the gallery")
    loader = reader.TestLoader(image_list, image_shape=tuple(info["image_shape"]), batch_size=args.batch_size,
                               num_workers=args.num_workers, skip_bad=args.skip_bad_images,
                               eval_resize=info.get("eval_resize", "crop"), ink_crop=bool(info.get("ink_crop")))
    with loader:  # its workers start before the predictor's threads
        embedder = Embedder(model_dir)
        features, rows = embed_list(embedder, loader)
    from retrieval.query import normalized

    return normalized(features, model_dir), rows.tolist()


def _read_dump(dump_dir, data_dir, fingerprint, dim):
    """infer.py's dump: (features, paths, labels, data_dir), checked against the index's model."""
    from engine.embedder import DUMP_FINGERPRINT

    try:
        features = np.load(os.path.join(dump_dir, "features.npy"))
        labels = np.load(os.path.join(dump_dir, "labels.npy")).tolist()
        with open(os.path.join(dump_dir, "paths.txt"), encoding="utf-8") as f:
            paths = f.read().splitlines()
        with open(os.path.join(dump_dir, DUMP_FINGERPRINT)) as f:
            written = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"{dump_dir} is not a complete infer.py dump (features.npy, labels.npy, paths.txt, "
                        f"{DUMP_FINGERPRINT}): {err}") from None
    if features.ndim != 2 or not len(features) == len(labels) == len(paths):
        raise UserError(f"{dump_dir}: features.npy {features.shape}, {len(labels)} labels and {len(paths)} paths "
                        f"do not match")
    dump_fingerprint, dump_dim = written.get("fingerprint"), features.shape[1]
    if dump_dim != dim or dump_fingerprint != fingerprint:
        raise UserError(f"{dump_dir} was embedded by model fingerprint {dump_fingerprint} ({dump_dim}-d), the "
                        f"index's model is {fingerprint} ({dim}-d): another model, embedding size or "
                        f"preprocessing; embed the gallery with the index's model")
    if not data_dir:
        data_dir = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return features, paths, labels, data_dir


# ---- add, remove, info ------------------------------------------------------------------------
def add(args, extra):
    from retrieval.gallery import Gallery

    gallery = Gallery.open(args.index_dir)
    known = frozenset(gallery.item_paths().values())
    fingerprint, info = _model_identity(gallery.model_dir)
    if fingerprint != gallery.fingerprint:
        raise UserError(f"the model in {gallery.model_dir} (fingerprint {fingerprint}) is not the one the index "
                        f"was built with ({gallery.fingerprint}): the index folder was changed by hand")
    features, paths, labels, _ = _gallery_embeddings(args, gallery.model_dir, fingerprint, info, known)
    ids = gallery.add(features, paths, labels) if paths else []
    print(f"Added {len(ids)} items to {args.index_dir}" + (f" (ids {ids[0]}-{ids[-1]})" if ids else "")
          + f"; {len(gallery)} items now", flush=True)
    gallery.close()


def remove(args, extra):
    from retrieval.gallery import Gallery

    if bool(args.ids) == bool(args.list):
        raise UserError("remove needs --ids 3,17 or --list FILE")
    gallery = Gallery.open(args.index_dir)
    if args.ids:
        try:
            ids = [int(part) for part in args.ids.split(",") if part.strip()]
        except ValueError:
            raise UserError(f"--ids takes comma-separated integers, not {args.ids!r}") from None
    else:
        import reader

        wanted = {os.path.abspath(p) for p in
                  reader.read_image_list(args.list, args.data_dir, require_labels=False, check_files=False).paths}
        ids = [item_id for item_id, path in gallery.item_paths().items() if path in wanted]
    removed = gallery.remove(ids)
    print(f"Removed {removed} items from {args.index_dir}"
          + (f" ({len(set(ids)) - removed} of the ids given were not in it)" if len(set(ids)) > removed else "")
          + f"; {len(gallery)} items now", flush=True)
    gallery.close()


def info(args, extra):
    from retrieval.gallery import Gallery

    gallery = Gallery.open(args.index_dir)
    print(json.dumps(gallery.stats(), indent=1), flush=True)
    gallery.close()


def run():
    """The console entry point (pyproject.toml)."""
    from cli.runtime import run_cli

    run_cli(main)


if __name__ == "__main__":
    run()
