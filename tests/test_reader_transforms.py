"""Transforms: output shape, dtype, normalisation, centre-crop geometry, crop statistics.

reader.test_transform is not imported by name: pytest would collect it as a test.
"""
import math

import numpy as np
import pytest

import reader
from reader import train_transform
from reader.transforms import _crop_box

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
