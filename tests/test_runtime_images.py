"""Image decoding and preprocessing: every mode to RGB, EXIF, bad files, arrays, normalisation."""

import warnings

import numpy as np
import pytest
from PIL import Image

from runtime_fakes import write_bad
from tbps_runtime.errors import DataError, InputFileNotFoundError
from tbps_runtime.model.images import IMAGENET_MEAN, IMAGENET_STD, normalize, read_image, resize_rgb


def pixels_of(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's palette-transparency warning
        image = read_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


@pytest.mark.parametrize("mode, value, fmt, expected", [
    ("L", 7, "PNG", (7, 7, 7)),
    ("1", 1, "PNG", (255, 255, 255)),
    ("RGB", (10, 20, 30), "PNG", (10, 20, 30)),
    ("RGBA", (200, 100, 50, 255), "PNG", (200, 100, 50)),
    ("RGBA", (200, 100, 50, 0), "PNG", (0, 0, 0)),  # transparent: composited on black
    ("RGBA", (200, 100, 50, 128), "PNG", (100, 50, 25)),
    ("LA", (200, 0), "PNG", (0, 0, 0)),
    ("I;16", 65535, "PNG", (255, 255, 255)),
    ("I;16", 32896, "PNG", (128, 128, 128)),
    ("I", 1000, "TIFF", (4, 4, 4)),  # beyond 8 bits: taken as a 16-bit range
    ("I", 200, "TIFF", (200, 200, 200)),
    ("F", 0.5, "TIFF", (128, 128, 128)),  # float in [0, 1]
    ("F", 100.0, "TIFF", (100, 100, 100)),
])
def test_every_mode_becomes_8_bit_rgb(tmp_path, mode, value, fmt, expected):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new(mode, (4, 6), value).save(path, format=fmt)
    pixels = pixels_of(path)
    assert pixels.shape == (6, 4, 3) and pixels.dtype == np.uint8
    np.testing.assert_allclose(pixels[0, 0], expected, atol=1)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # red in CMYK
    np.testing.assert_allclose(pixels_of(path)[4, 4], (255, 0, 0), atol=3)


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 255, 255, 10, 20, 30] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.png", transparency=0)  # index 0 (white) is transparent
    pixels = pixels_of(tmp_path / "p.png")
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[0, 1].tolist() == [10, 20, 30]
    Image.new("P", (4, 4), 1).save(tmp_path / "opaque.gif")
    assert pixels_of(tmp_path / "opaque.gif").shape == (4, 4, 3)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (4, 2), (0, 0, 255))
    image.putpixel((0, 0), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "o.png", exif=exif)
    pixels = pixels_of(tmp_path / "o.png")
    assert pixels.shape == (4, 2, 3)
    assert pixels[0, 1].tolist() == [255, 0, 0]  # the top-left pixel moved to the top-right


@pytest.mark.parametrize("kind", ["corrupt", "empty", "truncated", "text"])
def test_unreadable_files_raise_data_error(tmp_path, kind):
    path = write_bad(tmp_path, kind)
    with pytest.raises(DataError, match="cannot read image"):
        read_image(path)


def test_truncated_png_and_missing_file(tmp_path):
    noise = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[:len(data) * 3 // 5])
    with pytest.raises(DataError):
        read_image(tmp_path / "t.png")
    with pytest.raises(InputFileNotFoundError, match="not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(InputFileNotFoundError):
        read_image(tmp_path)  # a directory


def test_resize_accepts_arrays_and_images_alike():
    array = np.random.default_rng(1).integers(0, 255, (50, 20, 3), dtype=np.uint8)
    from_array = resize_rgb(array, (16, 8))
    from_image = resize_rgb(Image.fromarray(array), (16, 8))
    assert from_array.shape == (16, 8, 3) and from_array.dtype == np.uint8
    np.testing.assert_array_equal(from_array, from_image)


@pytest.mark.parametrize("array", [
    np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32),
    np.zeros((0, 10, 3), np.uint8)])
def test_resize_refuses_malformed_arrays(array):
    with pytest.raises(DataError, match="image array"):
        resize_rgb(array, (16, 8))


def test_normalize_layout_and_values():
    pixels = np.zeros((2, 4, 3, 3), np.uint8)
    pixels[..., 0] = 255
    values = normalize(pixels)
    assert values.shape == (2, 3, 4, 3) and values.dtype == np.float32 and values.flags.c_contiguous
    np.testing.assert_allclose(values[0, 0, 0, 0], (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], rtol=1e-6)
    np.testing.assert_allclose(values[1, 2, 3, 2], -IMAGENET_MEAN[2] / IMAGENET_STD[2], rtol=1e-6)
