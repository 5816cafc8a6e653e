"""Tests for anomaly.data.io: decoding image and mask files into model-ready arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly.data.io import is_image_file, read_image, read_images, read_mask
from anomaly.errors import AnomalyError

LUMA = np.array([0.299, 0.587, 0.114])


def save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path, **kwargs)
    return path


def assert_one_line_naming(exc: pytest.ExceptionInfo, name: str) -> None:
    msg = str(exc.value)
    assert name in msg
    assert "\n" not in msg


@pytest.fixture
def rgb_u8() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- formats and bit depths


def test_gray_png_8bit_scaled_to_unit_range(tmp_path):
    a = np.array([[0, 51, 128, 255]], dtype=np.uint8)
    path = save(tmp_path / "g.png", a)
    out = read_image(path, "grayscale", (1, 4))
    assert out.shape == (1, 4, 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0], a[0] / 255.0, atol=1e-6)


def test_gray_png_16bit_uses_the_16bit_range(tmp_path):
    a = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    path = save(tmp_path / "g16.png", a)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # really a 16-bit file
    out = read_image(path, "grayscale", (1, 4))[0, :, 0]
    assert out[0] == 0.0
    assert out[3] == pytest.approx(1.0, abs=1e-6)
    assert out[2] == pytest.approx(0.5, abs=1e-4)
    # not divided by 255 and clipped, which would saturate every pixel above 255
    assert out[1] == pytest.approx(1000 / 65535, abs=1e-6)


@pytest.mark.parametrize("bits", [8, 16])
def test_gray_tiff(tmp_path, bits):
    dtype = np.uint8 if bits == 8 else np.uint16
    top = np.iinfo(dtype).max
    a = np.array([[0, top // 4], [top // 2, top]], dtype=dtype)
    path = save(tmp_path / f"g{bits}.tif", a)
    out = read_image(path, "grayscale", (2, 2))
    np.testing.assert_allclose(out[..., 0], a / top, atol=1e-6)


def test_rgb_jpeg(tmp_path):
    a = np.zeros((16, 16, 3), dtype=np.uint8)
    a[:] = (200, 100, 50)
    path = save(tmp_path / "c.jpg", a, quality=95)
    rgb = read_image(path, "rgb", (16, 16))
    assert rgb.shape == (16, 16, 3)
    np.testing.assert_allclose(rgb, np.broadcast_to(a / 255.0, rgb.shape), atol=4 / 255)
    gray = read_image(path, "grayscale", (16, 16))
    assert gray.shape == (16, 16, 1)
    np.testing.assert_allclose(gray[..., 0], (a / 255.0) @ LUMA, atol=4 / 255)


def test_rgba_png_drops_alpha(tmp_path, rgb_u8):
    alpha = np.zeros(rgb_u8.shape[:2], dtype=np.uint8)
    alpha[::2] = 255
    path = save(tmp_path / "a.png", np.dstack([rgb_u8, alpha]))
    with Image.open(path) as img:
        assert img.mode == "RGBA"
    rgb = read_image(path, "rgb", rgb_u8.shape[:2])
    assert rgb.shape == rgb_u8.shape
    np.testing.assert_allclose(rgb, rgb_u8 / 255.0, atol=1e-6)
    gray = read_image(path, "grayscale", rgb_u8.shape[:2])
    assert gray.shape == (*rgb_u8.shape[:2], 1)
    np.testing.assert_allclose(gray[..., 0], (rgb_u8 / 255.0) @ LUMA, atol=1e-5)


def test_bmp(tmp_path, rgb_u8):
    path = save(tmp_path / "b.bmp", rgb_u8)
    np.testing.assert_allclose(read_image(path, "rgb", rgb_u8.shape[:2]), rgb_u8 / 255.0, atol=1e-6)


def test_palette_png_decoded_to_its_colours(tmp_path):
    colours = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30]], dtype=np.uint8)
    a = colours[np.arange(24).reshape(4, 6) % 3]
    img = Image.fromarray(a).quantize(colors=3)
    img.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as check:
        assert check.mode == "P"
    out = read_image(tmp_path / "p.png", "rgb", (4, 6))
    np.testing.assert_allclose(out, a / 255.0, atol=1e-6)


def test_palette_png_with_transparency(tmp_path):
    a = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    img = Image.fromarray(a, mode="L").convert("P")
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    img.info["transparency"] = 0
    img.save(tmp_path / "pt.png", transparency=0)
    out = read_image(tmp_path / "pt.png", "rgb", (2, 2))
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[..., 0], a.astype(float), atol=1e-6)


def test_upper_case_extension_is_an_image(tmp_path, rgb_u8):
    path = save(tmp_path / "UPPER.PNG", rgb_u8)
    assert is_image_file(path)
    assert not is_image_file(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("x")
    assert not is_image_file(tmp_path / "notes.txt")


# --------------------------------------------------------------------------- channels


def test_gray_image_as_rgb_gives_three_equal_channels(tmp_path):
    a = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    path = save(tmp_path / "g.png", a)
    out = read_image(path, "rgb", (4, 5))
    assert out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    np.testing.assert_allclose(out[..., 0], a / 255.0, atol=1e-6)


@pytest.mark.parametrize("colour, expected", [((255, 0, 0), 0.299), ((0, 255, 0), 0.587),
                                              ((0, 0, 255), 0.114), ((255, 255, 255), 1.0)])
def test_rgb_as_grayscale_uses_luma_weights(tmp_path, colour, expected):
    a = np.zeros((3, 3, 3), dtype=np.uint8)
    a[:] = colour
    out = read_image(save(tmp_path / "c.png", a), "grayscale", (3, 3))
    assert out.shape == (3, 3, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)


# --------------------------------------------------------------------------- resizing


def test_resize_non_square_to_requested_height_and_width(tmp_path):
    a = np.zeros((60, 30), dtype=np.uint8)
    a[:30] = 255  # top half white, bottom half black
    out = read_image(save(tmp_path / "tall.png", a), "grayscale", (20, 40))
    assert out.shape == (20, 40, 1)
    assert out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    # orientation kept: rows are height
    assert out[:8].mean() > 0.99
    assert out[-8:].mean() < 0.01


def test_resize_keeps_a_constant_image_constant(tmp_path):
    a = np.full((50, 70, 3), 77, dtype=np.uint8)
    out = read_image(save(tmp_path / "flat.png", a), "rgb", (32, 32))
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(out, 77 / 255.0, atol=1e-5)


def test_read_images_stacks_in_order(tmp_path, rgb_u8):
    paths = [save(tmp_path / f"{i}.png", np.roll(rgb_u8, i, axis=1)) for i in range(5)]
    out = read_images(paths, "rgb", (8, 8), workers=3)
    assert out.shape == (5, 8, 8, 3)
    assert out.dtype == np.float32
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(out[i], read_image(p, "rgb", (8, 8)))
    assert read_images(paths, "grayscale", (8, 8)).shape == (5, 8, 8, 1)


def test_read_images_rejects_unknown_colour_mode(tmp_path, rgb_u8):
    path = save(tmp_path / "a.png", rgb_u8)
    with pytest.raises(AnomalyError, match="colour mode"):
        read_images([path], "cmyk", (8, 8))


def test_read_images_reports_the_bad_file(tmp_path, rgb_u8):
    good = save(tmp_path / "good.png", rgb_u8)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(AnomalyError) as exc:
        read_images([good, bad, good], "rgb", (8, 8))
    assert_one_line_naming(exc, "bad.png")


# --------------------------------------------------------------------------- broken files


def test_truncated_png_raises_one_line_error(tmp_path):
    rng = np.random.default_rng(1)
    path = save(tmp_path / "truncated.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AnomalyError) as exc:
        read_image(path, "rgb", (64, 64))
    assert_one_line_naming(exc, "truncated.png")


def test_text_file_named_png_raises(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("this is not a PNG\nsecond line\n")
    with pytest.raises(AnomalyError) as exc:
        read_image(path, "grayscale", (8, 8))
    assert_one_line_naming(exc, "x.png")


def test_missing_file_raises(tmp_path):
    with pytest.raises(AnomalyError) as exc:
        read_image(tmp_path / "nowhere.png", "grayscale", (8, 8))
    assert_one_line_naming(exc, "nowhere.png")


# --------------------------------------------------------------------------- masks


def test_mask_is_boolean_and_nonzero_means_defect(tmp_path):
    m = np.array([[0, 1, 0], [0, 255, 0], [0, 0, 0]], dtype=np.uint8)
    mask = save(tmp_path / "m.png", m)
    image = save(tmp_path / "i.png", np.zeros((3, 3), np.uint8))
    out = read_mask(mask, image, (3, 3))
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, m > 0)


def test_mask_upscaled_with_nearest_has_no_halo(tmp_path):
    m = np.zeros((4, 4), dtype=np.uint8)
    m[1, 2] = 255
    mask = save(tmp_path / "m.png", m)
    image = save(tmp_path / "i.png", np.zeros((4, 4), np.uint8))
    out = read_mask(mask, image, (16, 16))
    assert out.dtype == np.bool_
    assert out.shape == (16, 16)
    np.testing.assert_array_equal(out, np.kron(m > 0, np.ones((4, 4), dtype=bool)))


def test_mask_downscaled_stays_boolean_and_keeps_its_area(tmp_path):
    m = np.zeros((40, 60), dtype=np.uint8)
    m[8:24, 12:36] = 255  # 16x24 block, a quarter of it at half size is 8x12
    mask = save(tmp_path / "m.png", m)
    image = save(tmp_path / "i.png", np.zeros((40, 60, 3), np.uint8))
    out = read_mask(mask, image, (20, 30))
    assert out.dtype == np.bool_
    assert out.shape == (20, 30)
    assert out.sum() == 8 * 12
    rows, cols = np.nonzero(out)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 11, 6, 17)


def test_rgb_mask_is_accepted(tmp_path):
    m = np.zeros((5, 5, 3), dtype=np.uint8)
    m[2, 2] = 255
    mask = save(tmp_path / "m.png", m)
    image = save(tmp_path / "i.png", np.zeros((5, 5), np.uint8))
    out = read_mask(mask, image, (5, 5))
    assert out.shape == (5, 5)
    assert out.sum() == 1 and out[2, 2]


def test_mask_size_must_match_its_image(tmp_path):
    mask = save(tmp_path / "000_mask.png", np.zeros((30, 40), np.uint8))
    image = save(tmp_path / "000.png", np.zeros((40, 30), np.uint8))
    with pytest.raises(AnomalyError) as exc:
        read_mask(mask, image, (16, 16))
    assert_one_line_naming(exc, "000_mask.png")


def test_unreadable_mask_raises(tmp_path):
    mask = tmp_path / "000_mask.png"
    mask.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    image = save(tmp_path / "000.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(AnomalyError) as exc:
        read_mask(mask, image, (4, 4))
    assert_one_line_naming(exc, "000_mask.png")
