"""Build and change a gallery index (retrieval/gallery.py) from a set of images: index.py's work, callable from Python.

    from retrieval.indexing import GalleryImages, add_images, build_index

    build_index("gallery", GalleryImages(gallery_list="gallery.txt", data_dir="data"), model_dir="exported")
    add_images("gallery", GalleryImages(gallery_dir="new_photos"))   # embeds only the images not yet in it

The images come from one of three sources: a folder of class subfolders (label = subfolder name), a
list file of `path LABEL` lines, or infer.py's dump (features already embedded, by the same model:
the fingerprints must match). An index is built in a hidden folder beside its place and moved there
when complete, so a failed build leaves nothing behind.
"""
import os
import shutil
from dataclasses import dataclass

import numpy as np

from retrieval.gallery import MODEL_DIR, Gallery
from utility.errors import UserError

DEFAULT_BATCH_SIZE = 32
DEFAULT_NUM_WORKERS = 2
MODEL_INFO = ("model", "embedding_size", "image_shape", "eval_resize", "ink_crop")  # kept in gallery.json


@dataclass(frozen=True)
class GalleryImages:
    """Where the gallery's images come from (exactly one of gallery_dir, gallery_list, features) and how they are
    embedded. data_dir: the folder a list's (or a dump's) paths are relative to."""
    gallery_dir: str = None
    gallery_list: str = None
    features: str = None
    data_dir: str = ""
    batch_size: int = DEFAULT_BATCH_SIZE
    num_workers: int = DEFAULT_NUM_WORKERS
    skip_bad_images: bool = False
    engine: str = None  # engine.embedder.ENGINES (None: default_engine)

    def source(self):
        """The one source given (a UserError unless exactly one is)."""
        sources = [s for s in (self.gallery_dir, self.gallery_list, self.features) if s]
        if len(sources) != 1:
            raise UserError("give the gallery images with one of --gallery_dir, --gallery_list or --features")
        return sources[0]


# ---- build ---------------------------------------------------------------------------------
def build_index(index_dir, images, model_dir=None, *, write_model=None, backend="faiss", index_type=None,
                search_params=None, milvus_uri=None):
    """Embed `images` (a GalleryImages) into a new index folder and return its stats (Gallery.stats()).

    The model is an exported one (model_dir, copied into the index), or write_model(folder), a function that
    exports one into the folder it is given (index.py exports a checkpoint with it). index_type and
    search_params are faiss's (retrieval/backends/); milvus_uri a milvus-lite file or a server's address.
    """
    if bool(model_dir) == bool(write_model):
        raise UserError("build_index needs the model: model_dir (an exported model) or write_model")
    _check_new_index_dir(index_dir)
    images.source()  # checked before a model is copied or exported
    parent = os.path.dirname(os.path.abspath(index_dir))
    os.makedirs(parent, exist_ok=True)
    building = os.path.join(parent, f".{os.path.basename(os.path.abspath(index_dir))}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        model_copy = os.path.join(building, MODEL_DIR)
        if model_dir:
            _copy_model(model_dir, model_copy)
        else:
            write_model(model_copy)
        _keep_onnx_copy(model_copy)
        fingerprint, info = model_identity(model_copy)
        features, paths, labels, data_dir, sigma2 = _embeddings(images, model_copy, fingerprint, info)
        gallery = Gallery.create(building, dim=features.shape[1], fingerprint=fingerprint, model_info=info,
                                 data_dir=data_dir, backend=backend, index_type=index_type,
                                 search_params=search_params, milvus_uri=milvus_uri, expected_items=len(paths))
        try:
            gallery.add(features, paths, labels, sigma2=sigma2)
            stats = gallery.stats()
        finally:
            gallery.close()
        _replace_folder(building, index_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return stats


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


def model_identity(model_dir):
    """(fingerprint, the export settings an index keeps) of an exported model."""
    from engine.embedder import model_fingerprint, read_export_info

    info = read_export_info(model_dir)
    return model_fingerprint(model_dir), {name: info.get(name) for name in MODEL_INFO}


# ---- add, remove, info ------------------------------------------------------------------------
def add_images(index_dir, images):
    """Embed and add the images of `images` (a GalleryImages) not yet in the index; (new ids, items now)."""
    gallery = Gallery.open(index_dir)
    try:
        known = frozenset(gallery.item_paths().values())
        fingerprint, info = model_identity(gallery.model_dir)
        if fingerprint != gallery.fingerprint:
            raise UserError(f"the model in {gallery.model_dir} (fingerprint {fingerprint}) is not the one the index "
                            f"was built with ({gallery.fingerprint}): the index folder was changed by hand")
        _keep_onnx_copy(gallery.model_dir)  # an index built before indexes kept one gets it here
        features, paths, labels, _, sigma2 = _embeddings(images, gallery.model_dir, fingerprint, info, known)
        ids = gallery.add(features, paths, labels, sigma2=sigma2) if paths else []
        return ids, len(gallery)
    finally:
        gallery.close()


def _keep_onnx_copy(model_dir):
    """Write the index model's ONNX copy unless it has one: search.py, serve.py and index.py add then load it
    without Paddle (about a second less than converting the export each time)."""
    from engine.onnx_export import BESIDE_EXPORT, keep_beside_export

    if not os.path.exists(os.path.join(model_dir, BESIDE_EXPORT)):
        keep_beside_export(model_dir)


def remove_items(index_dir, ids=(), paths=()):
    """Remove items by id and by image path; (items removed, items now). Ids and paths not in it are ignored."""
    gallery = Gallery.open(index_dir)
    try:
        wanted = {os.path.abspath(p) for p in paths}
        ids = set(ids) | {item_id for item_id, path in gallery.item_paths().items() if path in wanted}
        return gallery.remove(sorted(ids)), len(gallery)
    finally:
        gallery.close()


def index_info(index_dir):
    """The index's settings and size (Gallery.stats())."""
    gallery = Gallery.open(index_dir)
    try:
        return gallery.stats()
    finally:
        gallery.close()


# ---- the gallery's images and their embeddings ------------------------------------------------
def folder_images(gallery_dir):
    """(paths, labels) of a folder of class subfolders; a label is its subfolder's name."""
    from data.folder import class_images

    found = class_images(gallery_dir)
    return [os.path.join(gallery_dir, p) for p, _ in found], [name for _, name in found]


def list_images(list_file, data_dir):
    """(paths, labels) of a list file of `path LABEL` lines, paths relative to data_dir."""
    import reader

    image_list = reader.read_image_list(list_file, data_dir)
    return image_list.paths, image_list.labels.tolist()


def list_paths(list_file, data_dir):
    """The paths of a list file's images (labels optional, files need not exist), relative to data_dir."""
    import reader

    return reader.read_image_list(list_file, data_dir, require_labels=False, check_files=False).paths


def _embeddings(images, model_dir, fingerprint, info, known_paths=None):
    """(features [n, D], paths, labels, data_dir, sigma^2 [n] or None) of the images, less the gallery's
    known_paths when adding to one (None: building)."""
    adding = known_paths is not None
    known_paths = known_paths or frozenset()
    images.source()
    if images.features:
        from engine.dump import read_dump

        features, paths, labels, data_dir, sigma2 = read_dump(images.features, images.data_dir, fingerprint,
                                                              info["embedding_size"] or None)  # 0: pooled feature
        keep = [i for i, path in enumerate(paths) if os.path.abspath(path) not in known_paths]
        return (features[keep], [paths[i] for i in keep], [labels[i] for i in keep], data_dir,
                None if sigma2 is None else sigma2[keep])
    if images.gallery_dir:
        data_dir = images.gallery_dir
        paths, labels = folder_images(data_dir)
    else:
        data_dir = images.data_dir
        paths, labels = list_images(images.gallery_list, data_dir)
    new = [i for i, path in enumerate(paths) if os.path.abspath(path) not in known_paths]
    if adding:
        print(f"{len(new)} new images ({len(paths) - len(new)} already in the gallery)", flush=True)
    paths, labels = [paths[i] for i in new], [labels[i] for i in new]
    if not paths:
        return np.zeros((0, info["embedding_size"]), np.float32), [], [], data_dir or ".", None
    # New images that are all unreadable (and skipped) add nothing to a gallery; a new gallery needs one.
    features, rows, sigma2 = embed_files(paths, model_dir, images.batch_size, images.num_workers,
                                         images.skip_bad_images, images.engine, allow_empty=adding)
    return features, [paths[i] for i in rows], [labels[i] for i in rows], data_dir or ".", sigma2


def embed_files(paths, model_dir, batch_size=DEFAULT_BATCH_SIZE, num_workers=DEFAULT_NUM_WORKERS, skip_bad=False,
                engine=None, allow_empty=False):
    """L2-normalised embeddings of image files by an exported model, with its preprocessing; (features, kept rows,
    sigma^2 [kept] or None when the model predicts no uncertainty). `allow_empty`: no readable image gives zero
    rows instead of an error."""
    import reader
    from engine.embedder import Embedder, embed_list, read_export_info
    from retrieval.query import normalized

    info = read_export_info(model_dir)
    image_list = reader.ImageList(paths, None, None, None, "the gallery")
    loader = reader.TestLoader(image_list, image_shape=tuple(info["image_shape"]), batch_size=batch_size,
                               num_workers=num_workers, skip_bad=skip_bad,
                               eval_resize=info.get("eval_resize", "crop"), ink_crop=bool(info.get("ink_crop")))
    with loader:  # its workers start before the predictor's threads
        embedder = Embedder(model_dir, engine=engine)
        features, rows, *sigma2 = embed_list(embedder, loader, with_uncertainty=embedder.predicts_uncertainty,
                                             allow_empty=allow_empty)
    return normalized(features, model_dir), rows.tolist(), (sigma2[0] if sigma2 else None)
