"""Transforms: output shape, dtype, normalisation, centre-crop geometry, crop statistics.

reader.test_transform is not imported by name: pytest would collect it as a test.
"""
import math

import numpy as np
import pytest

import reader
from reader import train_transform
from reader.transforms import _crop_box, crop_to_ink

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _by_hand(rgb_hwc):
    """(x / 255 - mean) / std, CHW, computed in float64 as the reference."""
    return ((rgb_hwc / 255.0 - MEAN) / STD).transpose(2, 0, 1)


def _random_rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_constant_image_normalised_exactly():
    colour = np.array([200, 30, 117], dtype=np.uint8)
    rgb = np.broadcast_to(colour, (40, 50, 3)).copy()
    expected = (colour / 255.0 - MEAN) / STD
    for out in (reader.test_transform(rgb, (3, 24, 24)),
                train_transform(rgb, (3, 24, 24), np.random.default_rng(3), color_jitter=False, rotate=True)):
        assert out.shape == (3, 24, 24) and out.dtype == np.float32 and out.flags.c_contiguous
        for channel in range(3):
            assert np.allclose(out[channel], expected[channel], atol=1e-5)


def test_test_transform_is_a_centre_crop_when_no_resize_is_needed():
    # 56 * 256 / 224 = 64: a 64-pixel short side is already the resize target.
    rgb = _random_rgb(64, 80)
    out = reader.test_transform(rgb, (3, 56, 56))
    assert out.shape == (3, 56, 56)
    assert np.allclose(out, _by_hand(rgb[4:60, 12:68]), atol=1e-5)


def test_test_transform_resizes_short_side_to_256_over_224():
    # Each 2x2 block of the 128x160 image is one colour, so halving it (to the short side
    # round(56 * 256 / 224) = 64) gives the 64x80 block image exactly; then the centre 56x56.
    blocks = _random_rgb(64, 80, seed=4)
    rgb = np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)
    assert np.allclose(reader.test_transform(rgb, (3, 56, 56)), _by_hand(blocks[4:60, 12:68]), atol=1e-5)
    assert reader.test_transform(rgb, (3, 224, 224)).shape == (3, 224, 224)
    # A wide target on a tall image is still covered.
    assert reader.test_transform(_random_rgb(150, 40), (3, 32, 96)).shape == (3, 32, 96)


@pytest.mark.parametrize("augment", [{}, {"color_jitter": True}, {"rotate": True}, {"random_erasing": True},
                                     {"color_jitter": True, "rotate": True, "random_erasing": True}])
def test_train_transform_shape_range_and_reproducibility(augment):
    rgb = _random_rgb(37, 53)
    outs = [train_transform(rgb, (3, 32, 48), np.random.default_rng(seed), **augment) for seed in (5, 5, 6)]
    for out in outs:
        assert out.shape == (3, 32, 48) and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    if not augment.get("random_erasing"):
        low, high = _by_hand(np.zeros((1, 1, 3))), _by_hand(np.full((1, 1, 3), 255.0))
        assert (outs[0] >= low - 1e-5).all() and (outs[0] <= high + 1e-5).all()


def test_train_transform_flips_about_half_the_time():
    # A left-dark, right-bright image: flipped outputs are bright on the left.
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[:, 16:] = 255
    flipped = 0
    for seed in range(200):
        out = train_transform(rgb, (3, 16, 16), np.random.default_rng(seed))
        flipped += out[0, :, 0].mean() > out[0, :, -1].mean()
    assert 70 < flipped < 130


def test_colour_jitter_changes_colours():
    rgb = _random_rgb(32, 32)
    plain = train_transform(rgb, (3, 32, 32), np.random.default_rng(1))
    jittered = train_transform(rgb, (3, 32, 32), np.random.default_rng(1), color_jitter=True)
    assert not np.allclose(plain, jittered)


def test_random_erasing_changes_a_rectangle_only():
    rgb = _random_rgb(32, 32)
    changed_fraction = []
    for seed in range(40):
        plain = train_transform(rgb, (3, 32, 32), np.random.default_rng(seed))
        erased = train_transform(rgb, (3, 32, 32), np.random.default_rng(seed), random_erasing=True)
        diff = np.any(plain != erased, axis=0)
        if diff.any():
            rows, cols = np.nonzero(diff)
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert diff.sum() == box  # the changed pixels form one rectangle
            changed_fraction.append(diff.mean())
    assert 8 <= len(changed_fraction) <= 32
    assert max(changed_fraction) <= 0.4


def test_crop_boxes_follow_the_area_and_ratio_ranges():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, crop_h, crop_w = _crop_box(375, 500, 1.0, rng)
        assert 0 <= top and top + crop_h <= 375 and 0 <= left and left + crop_w <= 500
        assert 0.07 <= crop_h * crop_w / (375 * 500) <= 1.0
        assert 3 / 4 - 0.02 <= crop_w / crop_h <= 4 / 3 + 0.02 or crop_h == 375 or crop_w == 500


def test_crop_box_fallback_on_extreme_aspect_ratio():
    top, left, crop_h, crop_w = _crop_box(4, 400, 1.0, np.random.default_rng(0))
    assert (crop_h, crop_w) == (4, 4) and top == 0 and left == 198
    assert math.isclose(crop_w / crop_h, 1.0)


# --- Augmentation and evaluation-resize settings -------------------------------------------------

def _digest(arrays):
    import hashlib
    return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()[:16]


@pytest.mark.parametrize("augment, expected", [
    ({}, "7931d864336abcec"),
    ({"rotate": True}, "e329c6994d58e08f"),
    ({"color_jitter": True, "rotate": True, "random_erasing": True}, "72c4645372e602eb"),
])
def test_default_settings_reproduce_the_previous_transform_bit_for_bit(augment, expected):
    # Digests of the transform as it was before the settings existed (commit 81515bd), same inputs.
    rgb = np.random.default_rng(11).integers(0, 256, (45, 37, 3), dtype=np.uint8)
    implicit = [train_transform(rgb, (3, 24, 20), np.random.default_rng(seed), **augment) for seed in range(8)]
    assert _digest(implicit) == expected
    from reader.loaders import AUGMENT_DEFAULTS, check_augment
    explicit = [train_transform(rgb, (3, 24, 20), np.random.default_rng(seed), **check_augment(augment))
                for seed in range(8)]
    assert _digest(explicit) == expected and set(check_augment({})) == set(AUGMENT_DEFAULTS)
    assert _digest([reader.test_transform(rgb, (3, 24, 20))]) == "8de58e87ca2c0475"
    assert _digest([reader.test_transform(rgb, (3, 24, 20), "crop")]) == "8de58e87ca2c0475"


def test_hflip_off_never_flips():
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[:, 16:] = 255
    for seed in range(60):
        out = train_transform(rgb, (3, 16, 16), np.random.default_rng(seed), hflip=False,
                              crop_area=(0.9, 1.0), crop_aspect=(1.0, 1.0))
        assert out[0, :, 0].mean() < out[0, :, -1].mean()


def test_whole_image_crop_is_a_plain_resize():
    rgb = _random_rgb(40, 40, seed=2)
    out = train_transform(rgb, (3, 20, 20), np.random.default_rng(0), hflip=False, crop_area=(1.0, 1.0),
                          crop_aspect=(1.0, 1.0))
    # Area averaging of uint8 rounds to whole grey levels: within half a level (0.5 / 255 / std).
    assert np.allclose(out, _by_hand(rgb.reshape(20, 2, 20, 2, 3).mean(axis=(1, 3))), atol=0.01)


@pytest.mark.parametrize("area, aspect", [((0.64, 1.0), (0.75, 4 / 3)), ((0.3, 0.5), (1.0, 1.0)),
                                          ((0.5, 0.5), (0.5, 2.0))])
def test_crop_boxes_follow_the_given_ranges(area, aspect):
    rng = np.random.default_rng(1)
    for _ in range(300):
        top, left, crop_h, crop_w = _crop_box(300, 300, 1.0, rng, area, aspect)
        assert 0 <= top and top + crop_h <= 300 and 0 <= left and left + crop_w <= 300
        if (crop_h, crop_w) != (300, 300):  # not the fallback
            assert area[0] - 0.01 <= crop_h * crop_w / 300 ** 2 <= area[1] + 0.01
            assert aspect[0] - 0.02 <= crop_w / crop_h <= aspect[1] + 0.02


def test_rotation_degrees():
    rgb = _random_rgb(33, 33, seed=3)
    plain = dict(hflip=False, crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0))
    # --rotate True alone is +-10 degrees: the same as rotation_degrees=10.
    a = train_transform(rgb, (3, 33, 33), np.random.default_rng(4), rotate=True, **plain)
    b = train_transform(rgb, (3, 33, 33), np.random.default_rng(4), rotation_degrees=10, **plain)
    assert np.array_equal(a, b)
    # rotation_degrees wins over --rotate's +-10.
    c = train_transform(rgb, (3, 33, 33), np.random.default_rng(4), rotate=True, rotation_degrees=90, **plain)
    assert not np.array_equal(a, c)
    outs = [train_transform(rgb, (3, 16, 16), np.random.default_rng(s), rotation_degrees=45) for s in (7, 7, 8)]
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    low, high = _by_hand(np.zeros((1, 1, 3))), _by_hand(np.full((1, 1, 3), 255.0))
    for out in outs:
        assert out.shape == (3, 16, 16) and out.dtype == np.float32
        assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()
    # A 180-degree turn of a left-dark, right-bright image can put the bright half on the left.
    half = np.zeros((32, 32, 3), dtype=np.uint8)
    half[:, 16:] = 255
    turned = sum(train_transform(half, (3, 16, 16), np.random.default_rng(s), rotation_degrees=180, **plain)[0, :, 0].mean()
                 > 0 for s in range(40))
    assert 5 < turned < 35


def test_eval_resize_full_keeps_the_whole_image():
    # Strokes at the very border survive "full" and are cut off by "crop".
    rgb = np.full((64, 64, 3), 255, dtype=np.uint8)
    rgb[:, :2] = 0
    full = reader.test_transform(rgb, (3, 32, 32), "full")
    assert np.allclose(full, _by_hand(rgb.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))), atol=1e-5)
    assert full[0, :, 0].max() < 0
    crop = reader.test_transform(rgb, (3, 32, 32), "crop")
    assert crop.shape == (3, 32, 32) and crop[0, :, 0].min() > 0
    assert reader.test_transform(_random_rgb(50, 20), (3, 24, 32), "full").shape == (3, 24, 32)
    with pytest.raises(ValueError, match="eval_resize"):
        reader.test_transform(rgb, (3, 32, 32), "stretch")


def _drawing(height, width, ink_rows, ink_cols):
    """White paper with a black rectangle of ink at rows/cols (slices)."""
    rgb = np.full((height, width, 3), 255, dtype=np.uint8)
    rgb[ink_rows, ink_cols] = 0
    return rgb


def _ink_box(image):
    rows, cols = np.nonzero(image.min(axis=-1) < 128)
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_crop_to_ink_centres_the_strokes_in_a_square_with_a_margin():
    # Ink 40 rows x 10 columns: a 50 x 50 square, the ink's 40 rows 80 % of it, centred.
    square = crop_to_ink(_drawing(105, 105, slice(20, 60), slice(30, 40)))
    assert square.shape == (50, 50, 3) and square.dtype == np.uint8
    assert _ink_box(square) == (5, 44, 20, 29)
    assert (square[:5] == 255).all() and (square[45:] == 255).all()
    # Ink touching the corner: the square leaves the image and is white paper there.
    corner = crop_to_ink(_drawing(30, 30, slice(0, 8), slice(0, 8)))
    assert corner.shape == (10, 10, 3) and _ink_box(corner) == (1, 8, 1, 8) and (corner[0] == 255).all()
    # Grey images too; an image without ink is returned as it is.
    assert crop_to_ink(_drawing(105, 105, slice(20, 60), slice(30, 40))[:, :, 0]).shape == (50, 50)
    blank = np.full((7, 9, 3), 200, dtype=np.uint8)
    assert crop_to_ink(blank) is blank


def test_ink_crop_makes_size_and_position_on_the_page_irrelevant():
    # The same stroke drawn small in a corner and large in the middle looks the same after ink_crop.
    small = _drawing(100, 100, slice(5, 25), slice(10, 15))
    large = _drawing(100, 100, slice(20, 80), slice(35, 50))
    for mode in ("crop", "full"):
        a, b = (reader.test_transform(image, (3, 32, 32), mode, ink_crop=True) for image in (small, large))
        assert np.abs(a - b).mean() < 0.1  # only the edges of the stroke, resampled from 25 or 75 pixels
        without = [reader.test_transform(image, (3, 32, 32), mode) for image in (small, large)]
        assert np.abs(without[0] - without[1]).mean() > 0.4
    # Training: the square around the ink first, then the same random crop from the same seed.
    for seed in range(3):
        assert np.array_equal(train_transform(small, (3, 32, 32), np.random.default_rng(seed), ink_crop=True),
                              train_transform(crop_to_ink(small), (3, 32, 32), np.random.default_rng(seed)))


@pytest.mark.parametrize("augment, message", [({"crop_area": (0.0, 1.0)}, "crop_area"),
                                              ({"crop_area": (0.5, 1.5)}, "crop_area"),
                                              ({"crop_aspect": (2.0, 1.0)}, "crop_aspect"),
                                              ({"rotation_degrees": -1}, "rotation_degrees")])
def test_bad_settings_are_user_errors(augment, message):
    from reader.loaders import check_augment
    from utility.errors import UserError
    with pytest.raises(UserError, match=message):
        check_augment(augment)


def test_settings_from_flags():
    from cli.args import parse_args
    from reader.loaders import augment_from_args
    from utility.errors import UserError
    args = parse_args("train", ["--crop_area=0.64,1", "--hflip=False", "--rotation_degrees=15", "--eval_resize=full",
                                "--ink_crop=True"])
    augment = augment_from_args(args)
    assert augment["crop_area"] == (0.64, 1.0) and augment["hflip"] is False and augment["rotation_degrees"] == 15
    assert augment["ink_crop"] is True and args.ink_crop is True and parse_args("eval", []).ink_crop is False
    assert augment["crop_aspect"] == (3 / 4, 4 / 3) and args.eval_resize == "full"
    defaults = augment_from_args(parse_args("train", []))
    from reader.loaders import AUGMENT_DEFAULTS
    assert defaults == AUGMENT_DEFAULTS and parse_args("eval", []).eval_resize == "crop"
    for bad in (["--crop_area=1"], ["--crop_area=0.9,0.5"], ["--crop_area=0,1"], ["--crop_aspect=-1,2"],
                ["--rotation_degrees=181"], ["--eval_resize=stretch"], ["--hflip=maybe"]):
        with pytest.raises(UserError):
            parse_args("train", bad)


def test_test_loader_passes_eval_resize_and_ink_crop(tmp_path):
    import cv2

    from reader.image_list import read_image_list
    from utility.errors import UserError
    rgb = np.full((64, 64, 3), 255, dtype=np.uint8)
    rgb[:, :2] = 0
    cv2.imwrite(str(tmp_path / "a.png"), rgb)
    (tmp_path / "list.txt").write_text("a.png 0\n")
    image_list = read_image_list(str(tmp_path / "list.txt"), str(tmp_path))
    for mode in ("crop", "full"):
        for ink_crop in (False, True):
            with reader.TestLoader(image_list, image_shape=(3, 32, 32), batch_size=4, num_workers=0,
                                   eval_resize=mode, ink_crop=ink_crop) as loader:
                (images, rows), = loader.batches()
            assert np.array_equal(images[0], reader.test_transform(rgb, (3, 32, 32), mode, ink_crop))
    with pytest.raises(UserError, match="eval_resize"):
        reader.TestLoader(image_list, image_shape=(3, 32, 32), batch_size=4, num_workers=0, eval_resize="stretch")
