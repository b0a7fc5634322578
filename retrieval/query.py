"""Query embeddings: images -> L2-normalised embeddings by an exported model, with its own preprocessing.

The preprocessing is the evaluation transform the model was exported with (its preprocess.json:
input size, eval_resize, ink_crop), the same the gallery was embedded with, so a gallery image
given as a query finds itself with similarity 1.
"""
import threading

import numpy as np

from engine.embedder import Embedder, read_export_info
from reader.decode import MAX_PIXELS, BadImageError, load_rgb
from reader.transforms import test_transform
from utility.errors import UserError

BATCH_SIZE = 32  # images per predictor run


class QueryEmbedder:
    """embed_images(rgb list) / embed_files(paths) -> float32 [n, D], L2-normalised; embed(rgb list) -> (those,
    sigma^2 [n] or None when the model predicts no uncertainty); thread-safe."""

    def __init__(self, model_dir, max_pixels=MAX_PIXELS, engine=None):
        self.model_dir = model_dir
        self.info = read_export_info(model_dir)
        self.image_shape = tuple(self.info["image_shape"])
        self.eval_resize = self.info.get("eval_resize", "crop")
        self.ink_crop = bool(self.info.get("ink_crop", False))
        self.max_pixels = max_pixels
        self._embedder = Embedder(model_dir, engine=engine)
        self.fingerprint = self._embedder.fingerprint
        self._lock = threading.Lock()  # one predictor: one run at a time

    @property
    def dim(self):
        return int(self.info["embedding_size"])

    def preprocess(self, rgb):
        """HxWx3 uint8 RGB -> the model's CHW float32 input."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
            raise UserError(f"an image must be HxWx3 uint8 RGB, not {rgb.dtype} {rgb.shape}")
        return test_transform(rgb, self.image_shape, self.eval_resize, self.ink_crop)

    @property
    def predicts_uncertainty(self):
        return self._embedder.predicts_uncertainty

    def embed(self, rgb_list):
        inputs = [self.preprocess(rgb) for rgb in rgb_list]
        sigma2 = np.zeros(0, np.float32) if self.predicts_uncertainty else None
        if not inputs:
            return np.zeros((0, self.dim), np.float32), sigma2
        features, sigma2s = [], []
        with self._lock:
            for start in range(0, len(inputs), BATCH_SIZE):
                batch_features, batch_sigma2 = self._embedder.embed(np.stack(inputs[start:start + BATCH_SIZE]))
                features.append(np.asarray(batch_features, dtype=np.float32).copy())
                if batch_sigma2 is not None:
                    sigma2s.append(np.asarray(batch_sigma2, dtype=np.float32).copy())
        return normalized(np.concatenate(features), self.model_dir), (np.concatenate(sigma2s) if sigma2s else sigma2)

    def embed_images(self, rgb_list):
        return self.embed(rgb_list)[0]

    def embed_files(self, paths):
        return self.embed_images(read_images(paths, self.max_pixels))


def read_images(paths, max_pixels=MAX_PIXELS):
    """HxWx3 uint8 RGB arrays of image files (reader.decode.load_rgb); UserError naming an unreadable one."""
    images = []
    for path in paths:
        try:
            images.append(load_rgb(path, max_pixels))
        except BadImageError as err:
            raise UserError(str(err)) from None
    return images


def normalized(features, source):
    """Rows scaled to unit length; UserError naming `source` when any is not finite or zero."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    bad = ~np.isfinite(features).all(axis=1) | (norms[:, 0] == 0)
    if bad.any():
        raise UserError(f"the model in {source} gave {int(bad.sum())} non-finite or zero embedding(s) "
                        f"(rows {np.flatnonzero(bad)[:5].tolist()}): the exported parameters are probably broken")
    return features / norms
