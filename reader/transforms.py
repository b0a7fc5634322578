"""Image transforms: HxWx3 uint8 RGB in, CHW float32 normalised with ImageNet mean/std out.

All randomness comes from the numpy Generator passed in, so a sample's
augmentation is reproducible from its seed alone.
"""
import math

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
RESIZE_RATIO = 256 / 224        # eval_resize "crop": resize to this times the crop, then centre crop
EVAL_RESIZES = ("crop", "full")  # evaluation: centre crop of a slightly larger image, or the whole image
CROP_AREA = (0.08, 1.0)         # random-resized crop: fraction of the image area (--crop_area)
CROP_ASPECT = (3 / 4, 4 / 3)    # random-resized crop: aspect ratio range (--crop_aspect)
CROP_ATTEMPTS = 10
JITTER_STRENGTH = 0.4           # brightness/contrast/saturation factors in [0.6, 1.4]
MAX_ROTATION_DEGREES = 10.0     # --rotate True without --rotation_degrees
ERASE_PROBABILITY = 0.5
ERASE_AREA = (0.02, 0.33)       # random erasing (Zhong et al. 2017): fraction of the image area
ERASE_LOG_RATIO = (math.log(0.3), math.log(1 / 0.3))
INK_THRESHOLD = 128             # --ink_crop: a pixel is ink when its grey value is below this
INK_FRACTION = 0.8              # --ink_crop: the ink's longer side, as a fraction of the square it is centred in
PAPER = 255                     # --ink_crop: the colour of the margin added around the ink

_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_OFFSET = (IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def train_transform(rgb, image_shape, rng, color_jitter=False, rotate=False, random_erasing=False,
                    crop_area=CROP_AREA, crop_aspect=CROP_ASPECT, hflip=True, rotation_degrees=0.0, ink_crop=False):
    """Random-resized crop to (H, W), random horizontal flip, optional augmentations.

    image_shape is (3, H, W). crop_area: (min, max) fraction of the image area the crop
    covers; crop_aspect: (min, max) aspect ratio of the crop, relative to the output's own
    (log-uniform). hflip: flip left-right with probability 1/2. Rotation by a uniform angle
    in +-rotation_degrees when it is positive; rotate=True alone means +-MAX_ROTATION_DEGREES.
    ink_crop: first the square around the strokes of a drawing (crop_to_ink).
    The defaults are the ImageNet recipe. Returns CHW float32, normalised.
    """
    height, width = image_shape[1], image_shape[2]
    if ink_crop:
        rgb = crop_to_ink(rgb)
    image = random_resized_crop(rgb, height, width, rng, crop_area, crop_aspect)
    if hflip and rng.random() < 0.5:
        image = cv2.flip(image, 1)
    degrees = rotation_degrees if rotation_degrees > 0 else (MAX_ROTATION_DEGREES if rotate else 0.0)
    if degrees > 0:
        image = random_rotation(image, rng, degrees)
    if color_jitter:
        image = jitter_colours(image, rng)
    chw = normalize(image)
    if random_erasing:
        erase_random_rectangle(chw, rng)
    return chw


def test_transform(rgb, image_shape, eval_resize="crop", ink_crop=False):
    """Evaluation preprocessing to (H, W).

    eval_resize "crop" (the ImageNet protocol): resize so that the crop is 224/256 of the
    image (short side of a square crop becomes round(H * 256 / 224)), then take the centre
    (H, W) crop. "full": resize the whole image to (H, W), nothing cut off (for drawings
    whose strokes reach the border). ink_crop: first the square around the strokes of a drawing
    (crop_to_ink), as in training.
    """
    height, width = image_shape[1], image_shape[2]
    if ink_crop:
        rgb = crop_to_ink(rgb)
    if eval_resize == "full":
        return normalize(resize(rgb, height, width))
    if eval_resize != "crop":
        raise ValueError(f"eval_resize must be one of {EVAL_RESIZES}, got {eval_resize!r}")
    src_h, src_w = rgb.shape[:2]
    scale = RESIZE_RATIO * max(height / src_h, width / src_w)
    new_h = max(height, round(src_h * scale))
    new_w = max(width, round(src_w * scale))
    resized = resize(rgb, new_h, new_w)
    top = (new_h - height) // 2
    left = (new_w - width) // 2
    return normalize(resized[top:top + height, left:left + width])


def crop_to_ink(rgb):
    """The square around the dark strokes of a drawing on light paper, the strokes centred.

    The ink's bounding box, its longer side INK_FRACTION of the square's; where the square leaves
    the image it is filled with white paper. An image without ink is returned as it is. Every
    drawing then fills the network's input the same way, whatever its size and place on the page.
    """
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    rows, cols = np.nonzero(gray < INK_THRESHOLD)
    if rows.size == 0:
        return rgb
    side = round((max(rows.max() - rows.min(), cols.max() - cols.min()) + 1) / INK_FRACTION)
    top = round((rows.min() + rows.max() + 1 - side) / 2)
    left = round((cols.min() + cols.max() + 1 - side) / 2)
    square = np.full((side, side) + rgb.shape[2:], PAPER, dtype=rgb.dtype)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + side, rgb.shape[0]), min(left + side, rgb.shape[1])
    square[src_top - top:src_bottom - top, src_left - left:src_right - left] = rgb[src_top:src_bottom, src_left:src_right]
    return square


def normalize(image):
    """HxWx3 RGB (uint8 or float in 0..255) -> contiguous CHW float32, (x/255 - mean) / std."""
    hwc = image.astype(np.float32) * _SCALE - _OFFSET
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))


def resize(image, height, width):
    """Area averaging when shrinking (no aliasing), bilinear when enlarging."""
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def random_resized_crop(image, height, width, rng, crop_area=CROP_AREA, crop_aspect=CROP_ASPECT):
    """Crop a random area fraction and aspect ratio, resized to (height, width).

    The aspect ratio is drawn log-uniformly in crop_aspect around the output's own
    width/height ratio, so non-square outputs are not systematically stretched.
    """
    src_h, src_w = image.shape[:2]
    top, left, crop_h, crop_w = _crop_box(src_h, src_w, width / height, rng, crop_area, crop_aspect)
    return resize(image[top:top + crop_h, left:left + crop_w], height, width)


def _crop_box(src_h, src_w, target_ratio, rng, crop_area=CROP_AREA, crop_aspect=CROP_ASPECT):
    area = src_h * src_w
    log_ratio = (math.log(crop_aspect[0]), math.log(crop_aspect[1]))
    for _ in range(CROP_ATTEMPTS):
        crop_area_px = area * rng.uniform(*crop_area)
        ratio = target_ratio * math.exp(rng.uniform(*log_ratio))
        crop_w = round(math.sqrt(crop_area_px * ratio))
        crop_h = round(math.sqrt(crop_area_px / ratio))
        if 0 < crop_w <= src_w and 0 < crop_h <= src_h:
            top = int(rng.integers(0, src_h - crop_h + 1))
            left = int(rng.integers(0, src_w - crop_w + 1))
            return top, left, crop_h, crop_w
    # Fallback: the largest centred crop with the target aspect ratio.
    crop_w = min(src_w, round(src_h * target_ratio)) or 1
    crop_h = min(src_h, round(src_w / target_ratio)) or 1
    return (src_h - crop_h) // 2, (src_w - crop_w) // 2, crop_h, crop_w


def random_rotation(image, rng, degrees=MAX_ROTATION_DEGREES):
    """Rotate by a uniform angle in +-degrees about the centre; borders mirrored."""
    angle = rng.uniform(-degrees, degrees)
    rows, cols = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((cols - 1) / 2, (rows - 1) / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (cols, rows), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def jitter_colours(image, rng):
    """Brightness, contrast, then saturation, each by a factor in 1 +- JITTER_STRENGTH.

    Returns float32 HxWx3 in 0..255.
    """
    low, high = 1.0 - JITTER_STRENGTH, 1.0 + JITTER_STRENGTH
    brightness, contrast, saturation = rng.uniform(low, high, size=3).astype(np.float32)
    out = image.astype(np.float32) * brightness
    np.clip(out, 0, 255, out=out)
    mean_gray = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).mean()
    out = (out - mean_gray) * contrast + mean_gray
    np.clip(out, 0, 255, out=out)
    gray = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[:, :, None]
    out = (out - gray) * saturation + gray
    np.clip(out, 0, 255, out=out)
    return out


def erase_random_rectangle(chw, rng):
    """With probability ERASE_PROBABILITY, fill a random rectangle of chw with N(0, 1) noise (in place)."""
    if rng.random() >= ERASE_PROBABILITY:
        return
    _, rows, cols = chw.shape
    for _ in range(CROP_ATTEMPTS):
        erase_area = rows * cols * rng.uniform(*ERASE_AREA)
        ratio = math.exp(rng.uniform(*ERASE_LOG_RATIO))
        erase_h = round(math.sqrt(erase_area * ratio))
        erase_w = round(math.sqrt(erase_area / ratio))
        if 0 < erase_h < rows and 0 < erase_w < cols:
            top = int(rng.integers(0, rows - erase_h + 1))
            left = int(rng.integers(0, cols - erase_w + 1))
            noise = rng.standard_normal((chw.shape[0], erase_h, erase_w), dtype=np.float32)
            chw[:, top:top + erase_h, left:left + erase_w] = noise
            return
