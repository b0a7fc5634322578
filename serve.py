"""Serve a gallery index over HTTP: the search API (docs at /docs) and the search page at /.

    python serve.py --index_dir gallery [--host 127.0.0.1] [--port 8080]
    DML_SERVE_TOKEN=... python serve.py --index_dir gallery     # also allow POST /items and DELETE /items/{id}

The index folder is one written by index.py build; the service embeds queries with the index's own
model (retrieval/service.py says how requests are batched and what each endpoint answers).
"""
import argparse
import os

from cli.args import engine_flag
from cli.runtime import run_cli
from reader.decode import MAX_PIXELS
from retrieval.service import BATCH_IMAGES, BATCH_WAIT_MS, MAX_BATCH_FILES, MAX_FILE_BYTES, TOKEN_ENV


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Serve a gallery index: search API and web page.")
    parser.add_argument("--index_dir", required=True, help="index folder written by index.py build")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0 serves other machines: put TLS in front for a token)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument("--token", default=None,
                        help=f"bearer token for the write endpoints (default: the {TOKEN_ENV} environment variable, "
                             "which other users cannot read from the process list); none: writes are refused")
    parser.add_argument("--max_image_pixels", type=int, default=MAX_PIXELS,
                        help="images with more pixels are refused (a JPEG is first decoded at 1/2..1/8 size to "
                             "fit); 0 = no limit")
    parser.add_argument("--max_file_mb", type=float, default=MAX_FILE_BYTES / 2**20,
                        help="larger uploads are refused (413)")
    parser.add_argument("--max_batch_files", type=int, default=MAX_BATCH_FILES,
                        help="most images in one POST /search/batch")
    parser.add_argument("--batch_images", type=int, default=BATCH_IMAGES,
                        help="micro-batching: most query images embedded together")
    parser.add_argument("--batch_wait_ms", type=float, default=BATCH_WAIT_MS,
                        help="micro-batching: longest wait for more queries after the first")
    engine_flag(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import uvicorn

    from retrieval.gallery import Gallery
    from retrieval.service import create_app

    gallery = Gallery.open(args.index_dir, engine=args.engine)
    model = gallery.embedder.info  # loads the model now: a bad one is an error line here, not a failed request
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    app = create_app(gallery, token, max_file_bytes=int(args.max_file_mb * 2**20),
                     max_image_pixels=args.max_image_pixels, max_batch_files=args.max_batch_files,
                     batch_images=args.batch_images, batch_wait_ms=args.batch_wait_ms)
    stats = gallery.stats()
    print(f"Serving {stats['items']} items ({stats['index_type']} index, {model['model']} at "
          f"{model['image_shape'][1]}x{model['image_shape'][2]}) of {args.index_dir} at "
          f"http://{args.host}:{args.port}/ (API docs at /docs); writes "
          + ("need the token" if token else "refused (no token)"), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    gallery.close()


def run():
    """The console entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    run()
