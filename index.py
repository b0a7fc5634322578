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
without them. The work is retrieval/indexing.py's (also callable from Python; docs/retrieval.md).
"""
import json

from cli.retrieval_args import gallery_images, item_ids, parse_index_args
from cli.runtime import run_cli
from retrieval import indexing


def main(argv=None):
    args, extra = parse_index_args(__doc__, argv)
    if args.command == "build":
        images = gallery_images(args)
        write_model = args.pretrained_model and _checkpoint_exporter(args.pretrained_model, extra, images)
        stats = indexing.build_index(args.index_dir, images, args.model_dir, write_model=write_model,
                                     backend=args.backend, index_type=args.index_type,
                                     search_params=args.search_params, milvus_uri=args.milvus_uri)
        print(f"Built {args.index_dir}: {stats['items']} items, {stats['dim']}-d, {stats['backend']} "
              f"{stats['index_type']}, model fingerprint {stats['fingerprint']}", flush=True)
    elif args.command == "add":
        ids, total = indexing.add_images(args.index_dir, gallery_images(args))
        print(f"Added {len(ids)} items to {args.index_dir}" + (f" (ids {ids[0]}-{ids[-1]})" if ids else "")
              + f"; {total} items now", flush=True)
    elif args.command == "remove":
        ids = item_ids(args.ids) if args.ids else []
        paths = indexing.list_paths(args.list, args.data_dir) if args.list else []
        removed, total = indexing.remove_items(args.index_dir, ids, paths)
        missing = len(set(ids)) - removed
        print(f"Removed {removed} items from {args.index_dir}"
              + (f" ({missing} of the ids given were not in it)" if missing > 0 else "") + f"; {total} items now",
              flush=True)
    else:
        print(json.dumps(indexing.index_info(args.index_dir), indent=1), flush=True)


def _checkpoint_exporter(checkpoint, extra, images):
    """write_model for build_index: export the checkpoint with its training run's settings, as infer.py does."""

    def write_model(out_dir):
        import paddle
        from cli.config import check_model_and_loss, resolve
        from engine.embedder import checkpoint_program, export

        # --infer_list names what will be embedded; without it infer.py's configuration falls back on a data set.
        config = resolve("infer", [f"--pretrained_model={checkpoint}", f"--infer_list={images.source()}", *extra])
        check_model_and_loss(config)
        exe, graph = checkpoint_program(config)
        export(exe, graph.program, graph.image, graph.embedding, out_dir, config, graph.uncertainty)
        paddle.disable_static()
        print(f"Exported {checkpoint} into the index folder", flush=True)

    return write_model


def run():
    """The console entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    run()
