"""The flags of index.py and search.py (their work is retrieval/indexing.py's and retrieval/searching.py's)."""
import argparse
from dataclasses import fields

from cli.args import BOOLEAN, check_re_ranking_alone, engine_flag, k_alpha
from evaluation.postprocess import Expansion
from retrieval.gallery import DEFAULT_SHORTLIST, MIN_SHORTLIST, ReRanking
from retrieval.indexing import DEFAULT_BATCH_SIZE, DEFAULT_NUM_WORKERS, GalleryImages
from utility.errors import UserError


def index_parser(description):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
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
        sub.add_argument("--num_workers", type=int, default=DEFAULT_NUM_WORKERS, help="image-decoding processes")
        sub.add_argument("--skip_bad_images", **BOOLEAN, default=False, help="leave unreadable images out (warned)")
        engine_flag(sub)
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


def parse_index_args(description, argv):
    """(args, extra): the flags of index.py; extra are infer.py flags, allowed after a build's --pretrained_model."""
    args, extra = index_parser(description).parse_known_args(argv)
    if extra and not (args.command == "build" and args.pretrained_model):
        raise UserError(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "build" and bool(args.model_dir) == bool(args.pretrained_model):
        raise UserError("build needs the model: --model_dir EXPORTED or --pretrained_model CHECKPOINT")
    if args.command == "remove" and bool(args.ids) == bool(args.list):
        raise UserError("remove needs --ids 3,17 or --list FILE")
    return args, extra


def gallery_images(args):
    """The GalleryImages that build's or add's flags name."""
    return GalleryImages(**{field.name: getattr(args, field.name) for field in fields(GalleryImages)})


def item_ids(text):
    """The ids of `--ids 3,17`."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--ids takes comma-separated integers, not {text!r}") from None


def search_parser(description):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index_dir", required=True, help="an index folder written by index.py build")
    parser.add_argument("--query", action="append", default=[], help="a query image (may be repeated)")
    parser.add_argument("--query_list", help="a list file of query images (`path [LABEL]` lines)")
    parser.add_argument("--data_dir", default="", help="folder the query list's paths are relative to")
    parser.add_argument("--top_k", type=int, default=10, help="matches per query")
    parser.add_argument("--threshold", type=float, help="drop matches with a lower similarity (no match if none)")
    parser.add_argument("--output", help="write the results as JSON lines to this file")
    parser.add_argument("--picture", help="draw the queries and their matches into this PNG")
    parser.add_argument("--query_expansion", type=lambda text: Expansion(*k_alpha(text)), default=None,
                        metavar="K,ALPHA",
                        help="K,ALPHA: search again with each query plus its K best matches' gallery vectors "
                             "weighted by similarity**ALPHA, normalised (alpha-QE; ALPHA 0 = average query expansion)")
    parser.add_argument("--re_ranking", nargs="?", const="true", default=None, metavar="SHORTLIST",
                        help=f"order each query's SHORTLIST most similar items (default {DEFAULT_SHORTLIST}, at least "
                             f"{MIN_SHORTLIST} and top_k) by k-reciprocal re-ranked distance (eval.py's --re_ranking "
                             f"over the query and its shortlist); similarities and --threshold stay the cosine's")
    engine_flag(parser)
    return parser


def parse_search_args(description, argv):
    args = search_parser(description).parse_args(argv)
    if args.top_k < 1:
        raise UserError(f"--top_k must be at least 1, not {args.top_k}")
    args.re_ranking = None if args.re_ranking is None else ReRanking.parse(args.re_ranking)
    check_re_ranking_alone(args)
    return args
