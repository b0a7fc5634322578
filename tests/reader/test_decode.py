"""load_rgb: every image mode becomes HxWx3 uint8 RGB; unreadable files raise BadImageError.

References come from Pillow, an independent decoder.
"""
import numpy as np
import pytest
from PIL import Image

from reader import BadImageError, load_rgb

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)


def _save(tmp_path, image, name, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return str(path)


def _check_rgb(array, height=12, width=16):
    assert array.dtype == np.uint8 and array.shape == (height, width, 3)


@pytest.mark.parametrize("mode, name", [("RGB", "a.png"), ("L", "a.png"), ("1", "a.png"), ("P", "a.png"),
                                        ("RGB", "a.bmp"), ("P", "a.gif"), ("RGB", "a.tif")])
def test_lossless_modes_match_pillow(tmp_path, mode, name):
    image = Image.fromarray(RGB).convert(mode)
    path = _save(tmp_path, image, name)
    rgb = load_rgb(path)
    _check_rgb(rgb)
    assert np.array_equal(rgb, np.asarray(Image.open(path).convert("RGB")))


def test_rgb_jpeg_close_to_pillow(tmp_path):
    path = _save(tmp_path, Image.fromarray(RGB), "a.jpg", quality=95)
    rgb = load_rgb(path)
    _check_rgb(rgb)
    assert np.abs(rgb.astype(int) - np.asarray(Image.open(path).convert("RGB"), dtype=int)).max() <= 3


def test_cmyk_and_gray_jpeg(tmp_path):
    for mode in ("CMYK", "L"):
        path = _save(tmp_path, Image.fromarray(RGB).convert(mode), f"{mode}.jpg", quality=95)
        rgb = load_rgb(path)
        _check_rgb(rgb)
        reference = np.asarray(Image.open(path).convert("RGB"), dtype=int)
        assert np.abs(rgb.astype(int) - reference).mean() < 3


def test_rgba_is_composited_on_white(tmp_path):
    alpha = RNG.integers(0, 256, (12, 16, 1), dtype=np.uint8)
    alpha[0, 0] = 0
    alpha[0, 1] = 255
    path = _save(tmp_path, Image.fromarray(np.concatenate([RGB, alpha], axis=2), "RGBA"), "a.png")
    rgb = load_rgb(path)
    _check_rgb(rgb)
    white = Image.new("RGBA", (16, 12), (255, 255, 255, 255))
    reference = np.asarray(Image.alpha_composite(white, Image.open(path)).convert("RGB"), dtype=int)
    assert np.abs(rgb.astype(int) - reference).max() <= 1
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 1].tolist() == RGB[0, 1].tolist()


def test_gray_with_alpha(tmp_path):
    path = _save(tmp_path, Image.fromarray(RGB).convert("LA"), "a.png")
    _check_rgb(load_rgb(path))


def test_16_bit_gray_keeps_high_byte(tmp_path):
    values = RNG.integers(0, 65536, (12, 16)).astype(np.uint16)
    path = _save(tmp_path, Image.fromarray(values), "a.png")
    assert Image.open(path).mode.startswith("I")
    rgb = load_rgb(path)
    _check_rgb(rgb)
    expected = (values >> 8).astype(np.uint8)
    assert all(np.array_equal(rgb[:, :, c], expected) for c in range(3))


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0garbage", b"\x89PNG\r\n\x1a\n"])
def test_corrupt_files_raise(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImageError) as info:
        load_rgb(str(path))
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_missing_file_raises(tmp_path):
    with pytest.raises(BadImageError, match="cannot read image"):
        load_rgb(str(tmp_path / "none.png"))


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.fromarray(RGB).convert("P")
    transparent = image.getpixel((0, 0))
    path = _save(tmp_path, image, "a.png", transparency=transparent)
    rgb = load_rgb(path)
    _check_rgb(rgb)
    reference = np.asarray(Image.alpha_composite(Image.new("RGBA", (16, 12), (255, 255, 255, 255)),
                                                 Image.open(path).convert("RGBA")).convert("RGB"))
    assert np.array_equal(rgb, reference) and rgb[0, 0].tolist() == [255, 255, 255]


def test_compositing_matches_exact_rounding():
    from reader.decode import _composite_on_white

    colour, alpha = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    bgra = np.stack([colour, colour, colour, alpha], axis=2).astype(np.uint8)
    expected = np.floor((colour * alpha + 255 * (255 - alpha)) / 255 + 0.5).astype(np.uint8)
    out = _composite_on_white(bgra)
    assert all(np.array_equal(out[:, :, c], expected) for c in range(3))


def test_files_pillow_cannot_size_are_still_held_to_the_limit(tmp_path):
    import cv2

    path = str(tmp_path / "a.pfm")  # a format OpenCV decodes and Pillow does not size here
    cv2.imwrite(path, np.full((30, 40, 3), 0.5, np.float32))
    assert load_rgb(path, max_pixels=None).shape == (30, 40, 3)
    assert load_rgb(path, max_pixels=0).shape == (30, 40, 3)  # --max_image_pixels=0: no limit
    with pytest.raises(BadImageError, match="more than the limit of 1000"):
        load_rgb(path, max_pixels=1000)


def _noise_jpeg(path, **options):
    rgb = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=90, **options)
    return path.read_bytes()


@pytest.mark.parametrize("options", [{}, {"progressive": True}], ids=["baseline", "progressive"])
def test_a_cut_off_jpeg_is_a_bad_image_naming_the_file(tmp_path, options):
    data = _noise_jpeg(tmp_path / "whole.jpg", **options)
    assert load_rgb(str(tmp_path / "whole.jpg")).shape == (96, 96, 3)
    for cut in (len(data) // 2, len(data) - 2):  # inside the scans; only the end-of-image marker missing
        (tmp_path / "cut.jpg").write_bytes(data[:cut])
        with pytest.raises(BadImageError, match=r"cut\.jpg \(truncated JPEG"):
            load_rgb(str(tmp_path / "cut.jpg"))


def test_a_jpeg_with_a_thumbnail_is_judged_by_its_main_image(tmp_path):
    thumbnail = _noise_jpeg(tmp_path / "thumb.jpg")  # a whole JPEG (with its own FFD9) inside an APP segment
    main = _noise_jpeg(tmp_path / "main.jpg")
    app1 = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    whole = main[:2] + app1 + main[2:]
    (tmp_path / "with_thumb.jpg").write_bytes(whole)
    assert load_rgb(str(tmp_path / "with_thumb.jpg")).shape == (96, 96, 3)
    (tmp_path / "cut.jpg").write_bytes(whole[:len(whole) - len(main) // 3])
    with pytest.raises(BadImageError, match="truncated JPEG"):
        load_rgb(str(tmp_path / "cut.jpg"))
    (tmp_path / "padded.jpg").write_bytes(main + b"\x00" * 100)  # bytes after the end marker are harmless
    assert load_rgb(str(tmp_path / "padded.jpg")).shape == (96, 96, 3)


def test_non_finite_pixels_are_a_bad_image(tmp_path):
    import cv2

    pixels = np.full((8, 8, 3), 0.5, np.float32)
    cv2.imwrite(str(tmp_path / "fine.tiff"), pixels)
    assert load_rgb(str(tmp_path / "fine.tiff"))[0, 0].tolist() == [128, 128, 128]
    pixels[2, 3, 1] = np.nan
    cv2.imwrite(str(tmp_path / "nan.tiff"), pixels)
    with pytest.raises(BadImageError, match=r"nan\.tiff .*non-finite pixel values"):
        load_rgb(str(tmp_path / "nan.tiff"))
