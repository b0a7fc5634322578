"""Decoding image files into HxWx3 uint8 RGB arrays, whatever their mode."""
import cv2
import numpy as np

JPEG_MAGIC = b"\xff\xd8"
WHITE = 255.0

# Decoding failures are reported by the reader with the file's path; OpenCV's own
# warnings about broken files would only repeat them without saying which file.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_FATAL)
# One OpenCV thread per process: the reader's parallelism is its worker processes,
# and forked workers must not inherit a running OpenCV thread pool (it deadlocks them).
cv2.setNumThreads(1)


class BadImageError(Exception):
    """An image file that cannot be read or decoded."""

    def __init__(self, path, reason):
        super().__init__(f"cannot read image {path} ({reason})")
        self.path = path
        self.reason = reason


def load_rgb(path):
    """Read an image file as an HxWx3 uint8 RGB array.

    Grayscale, 1-bit, palette, CMYK and 16-bit images are converted to 8-bit
    RGB. Transparent images (RGBA, LA, palette with transparency) are
    composited on a white background. JPEG EXIF orientation is applied.
    Raises BadImageError when the file is unreadable or not a decodable image.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise BadImageError(path, err.strerror or str(err)) from None
    if not data:
        raise BadImageError(path, "empty file")
    encoded = np.frombuffer(data, dtype=np.uint8)
    try:
        if data.startswith(JPEG_MAGIC):
            # JPEGs have no alpha; this flag converts CMYK and gray and applies EXIF orientation.
            image = cv2.imdecode(encoded, cv2.IMREAD_COLOR_RGB)
        else:
            image = _to_rgb(cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED))
    except (cv2.error, ValueError) as err:
        raise BadImageError(path, f"decoder error: {str(err).strip().splitlines()[-1]}") from None
    if image is None or image.size == 0:
        raise BadImageError(path, "not a decodable image")
    return image


def _to_rgb(image):
    """RGB uint8 from what cv2 decodes unchanged: gray, BGR or BGRA, 8 or 16 bits."""
    if image is None:
        return None
    image = _to_uint8(image)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return _composite_on_white(image)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _to_uint8(image):
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if image.dtype.kind == "f":  # e.g. float TIFF, taken to hold values in 0..1
        return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported sample type {image.dtype}")


def _composite_on_white(bgra):
    alpha = bgra[:, :, 3:].astype(np.float32) / 255.0
    rgb = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB).astype(np.float32)
    return (rgb * alpha + WHITE * (1.0 - alpha) + 0.5).astype(np.uint8)
