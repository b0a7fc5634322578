"""Decoding image files into HxWx3 uint8 RGB arrays, whatever their mode, in bounded memory.

An image's size is read from its header before it is decoded. Above `max_pixels` a JPEG is
decoded at 1/2, 1/4 or 1/8 of its size by the JPEG decoder itself (never at full size), and
any other image is refused: a few kilobytes of PNG can announce gigabytes of pixels.
Transparent images are composited on white in integer arithmetic, a band of rows at a time.
"""
import os
import struct
import warnings

import cv2
import numpy as np
from PIL import Image

JPEG_MAGIC = b"\xff\xd8"
# PIL's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS): about 9459 x 9459.
MAX_PIXELS = 89_478_485
COMPOSITE_BAND = 1 << 20  # pixels composited at a time (the uint16 temporaries stay ~6 MB)

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


def load_rgb(path, max_pixels=MAX_PIXELS):
    """Read an image file as an HxWx3 uint8 RGB array.

    Grayscale, 1-bit, palette, CMYK and 16-bit images are converted to 8-bit
    RGB. Transparent images (RGBA, LA, palette with transparency) are
    composited on a white background. JPEG EXIF orientation is applied.
    An image of more than `max_pixels` pixels (0 or None: no limit, as `--max_image_pixels=0`) is decoded at
    1/2, 1/4 or 1/8 size when it is a JPEG whose reduced size fits, else refused.
    Raises BadImageError when the file is unreadable, not a decodable image, or too large.
    """
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise BadImageError(path, "empty file")
            is_jpeg = handle.read(2) == JPEG_MAGIC
            if is_jpeg and _jpeg_is_truncated(handle):
                raise BadImageError(path, "truncated JPEG: the file ends inside the image data")
            handle.seek(0)
            flag = _decode_flag(path, handle, is_jpeg, max_pixels)
    except OSError as err:
        raise BadImageError(path, err.strerror or str(err)) from None
    try:
        # cv2 reads the file itself: the encoded bytes are never all in memory at once
        image = cv2.imread(path, flag)
        if image is not None and not is_jpeg:
            image = _to_rgb(image)
        elif image is not None and flag != cv2.IMREAD_COLOR_RGB:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # the reduced-size flags decode BGR
    except (cv2.error, ValueError) as err:
        raise BadImageError(path, f"decoder error: {str(err).strip().splitlines()[-1]}") from None
    if image is None or image.size == 0:
        raise BadImageError(path, "not a decodable image")
    if max_pixels and image.shape[0] * image.shape[1] > max_pixels:  # header unread beforehand
        raise BadImageError(path, _too_large(image.shape[1], image.shape[0], max_pixels))
    return image


_REDUCED = ((1, cv2.IMREAD_COLOR_RGB), (2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
            (8, cv2.IMREAD_REDUCED_COLOR_8))
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _decode_flag(path, handle, is_jpeg, max_pixels):
    """The cv2 flag: full size, or the reduced JPEG decoding that fits max_pixels (sizes from the header)."""
    if not is_jpeg:
        size = _header_size(handle)
        if max_pixels and size and size[0] * size[1] > max_pixels:
            raise BadImageError(path, _too_large(*size, max_pixels))
        return cv2.IMREAD_UNCHANGED
    # JPEGs have no alpha; these flags convert CMYK and gray and apply EXIF orientation.
    size = _jpeg_size(handle)
    if not max_pixels or size is None:
        return cv2.IMREAD_COLOR_RGB
    width, height = size
    for scale, flag in _REDUCED:
        if -(-width // scale) * -(-height // scale) <= max_pixels:
            return flag
    raise BadImageError(path, _too_large(width, height, max_pixels) + ", even at 1/8 size")


def _jpeg_is_truncated(handle, tail_bytes=1 << 20):
    """Whether a JPEG lacks its end-of-image marker after its last scan.

    libjpeg decodes a cut-off JPEG with grey rows for the missing part and only a warning that names
    no file; a complete one ends its last scan (marker FFDA) with an end-of-image marker (FFD9).
    Entropy-coded data never holds FF D9 (FF bytes there are followed by 00), so an FFD9 after the
    last FFDA means the scans are whole. Only the file's last megabyte is read.
    """
    size = os.fstat(handle.fileno()).st_size
    handle.seek(max(0, size - tail_bytes))
    tail = handle.read()
    last_scan = tail.rfind(b"\xff\xda")
    return tail.find(b"\xff\xd9", last_scan + 2 if last_scan >= 0 else 0) < 0


def _too_large(width, height, max_pixels):
    return (f"{width}x{height} is {width * height} pixels, more than the limit of {max_pixels} "
            "(--max_image_pixels)")


def _jpeg_size(handle):
    """(width, height) from a JPEG's start-of-frame segment, or None when it cannot be found."""
    handle.seek(2)
    while True:
        head = handle.read(2)
        if len(head) < 2 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:                          # fill byte
            handle.seek(-1, os.SEEK_CUR)
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # segments without a length
            continue
        segment = handle.read(7)
        if len(segment) < 2:
            return None
        (length,) = struct.unpack_from(">H", segment)
        if marker in _JPEG_FRAMES:
            if len(segment) < 7:
                return None
            height, width = struct.unpack_from(">HH", segment, 3)
            return width, height
        if marker == 0xDA or length < 2:              # image data before any frame header: malformed
            return None
        handle.seek(length - len(segment), os.SEEK_CUR)


def _header_size(handle):
    """(width, height) from the header of any image Pillow knows, without decoding; None if unknown.

    Beyond twice Image.MAX_IMAGE_PIXELS Pillow refuses to say; then the decoded size is checked.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                return image.size
    except Exception:  # unknown format, damaged header, decompression-bomb refusal
        return None


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
        if not np.isfinite(image).all():
            raise ValueError("non-finite pixel values (NaN or infinity)")
        return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported sample type {image.dtype}")


def _composite_on_white(bgra):
    """RGB uint8 of a BGRA image over white: round((c * a + 255 * (255 - a)) / 255), a band of rows at a time.

    Integer arithmetic in uint16 (at most 255 * 255) on bands of about COMPOSITE_BAND pixels, so the
    only full-size allocation is the output.
    """
    height, width = bgra.shape[:2]
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, COMPOSITE_BAND // max(1, width))
    for top in range(0, height, rows):
        band = bgra[top:top + rows]
        alpha = band[:, :, 3:].astype(np.uint16)
        mixed = band[:, :, 2::-1].astype(np.uint16)   # BGR -> RGB
        mixed *= alpha
        mixed += (255 - alpha) * 255
        mixed += 127
        mixed //= 255
        out[top:top + rows] = mixed
    return out
