"""Image decoding rules: modes, alpha, EXIF, geometry, formats, errors (fixtures made in memory)."""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from hashcondense.data.images import IMAGE_EXTENSIONS, decode_image, is_image_name, probe_size
from hashcondense.data.sources import DataError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def flat(mode: str, size: tuple[int, int], color) -> Image.Image:
    return Image.new(mode, size, color)


def assert_rgb(array: np.ndarray, resolution: int) -> None:
    assert array.shape == (resolution, resolution, 3)
    assert array.dtype == np.uint8
    assert array.flags["C_CONTIGUOUS"]


def exif_rotated_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = img.getexif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif)


# --- modes -----------------------------------------------------------------------------------


def test_grayscale_l_is_flagged_and_replicated() -> None:
    array, gray = decode_image(encode(flat("L", (20, 20), 77), "PNG"), 8, name="g.png")
    assert_rgb(array, 8)
    assert gray is True
    assert (array == 77).all()


def test_rgb_is_not_flagged_even_when_grey() -> None:
    _, gray = decode_image(encode(flat("RGB", (8, 8), (50, 50, 50)), "PNG"), 8, name="c.png")
    assert gray is False


def test_rgba_transparent_becomes_white_opaque_keeps_colour() -> None:
    img = flat("RGBA", (16, 16), (0, 0, 0, 0))  # transparent black: must not stay black
    img.paste((10, 200, 30, 255), (0, 0, 8, 16))  # left half opaque green-ish
    array, gray = decode_image(encode(img, "PNG"), 16, name="a.png")
    assert gray is False
    assert (array[:, 8:] == 255).all()
    assert (array[:, :8] == (10, 200, 30)).all()


def test_rgba_half_transparent_blends_with_white() -> None:
    img = flat("RGBA", (4, 4), (0, 0, 0, 128))
    array, _ = decode_image(encode(img, "PNG"), 4, name="h.png")
    assert np.abs(array.astype(int) - 127).max() <= 1


def test_la_transparency_over_white() -> None:
    img = flat("LA", (8, 8), (0, 0))
    img.paste((40, 255), (0, 0, 4, 8))
    array, gray = decode_image(encode(img, "PNG"), 8, name="la.png")
    assert gray is True
    assert (array[:, 4:] == 255).all()
    assert (array[:, :4] == 40).all()


def palette_image(colors: list[tuple[int, int, int]], width: int = 4) -> Image.Image:
    """One column band per palette entry; spare entries are bright colours (unused)."""
    img = Image.new("P", (width * len(colors), 4))
    palette = [c for rgb in colors for c in rgb] + [255, 0, 255] * (256 - len(colors))
    img.putpalette(palette)
    img.putdata([x // width for _ in range(4) for x in range(width * len(colors))])
    return img


def test_palette_colour() -> None:
    data = encode(palette_image([RED, (0, 128, 255)]), "PNG")
    array, gray = decode_image(data, 4, name="p.png")
    assert gray is False
    # 8x4 -> 8x4 after scaling short side 4 -> 4: centre crop 4 of 8 columns = cols 2..5
    assert (array[:, :2] == RED).all()
    assert (array[:, 2:] == (0, 128, 255)).all()


def test_grey_palette_flagged_even_with_unused_colour_entries() -> None:
    data = encode(palette_image([(0, 0, 0), (200, 200, 200)]), "PNG")
    array, gray = decode_image(data, 4, name="gp.png")
    assert gray is True
    assert (array[:, :2] == 0).all() and (array[:, 2:] == 200).all()


def test_palette_transparency_over_white() -> None:
    img = palette_image([RED, (0, 0, 0)])
    data = encode(img, "PNG", transparency=1)  # entry 1 (black) is transparent
    array, _ = decode_image(data, 4, name="pt.png")
    assert (array[:, :2] == RED).all()
    assert (array[:, 2:] == 255).all()


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[65535, 32768, 0, 256]] * 4, dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    array, gray = decode_image(encode(img, "PNG"), 4, name="16.png")
    assert gray is True
    assert array[0, :, 0].tolist() == [255, 128, 0, 1]
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()


def test_mode_i_small_values_taken_as_is_and_f_clipped() -> None:
    small = Image.fromarray(np.array([[0, 100, 255, 7]] * 4, dtype=np.int32), "I")
    array, gray = decode_image(encode(small, "TIFF"), 4, name="i.tif")
    assert gray is True and array[0, :, 0].tolist() == [0, 100, 255, 7]
    big = Image.fromarray(np.array([[0, 100, 65535, 40000]] * 4, dtype=np.int32), "I")
    array, _ = decode_image(encode(big, "TIFF"), 4, name="ib.tif")
    assert array[0, :, 0].tolist() == [0, 0, 255, 156]
    f = Image.fromarray(np.array([[-5.0, 10.4, 300.0, 99.6]] * 4, dtype=np.float32), "F")
    array, gray = decode_image(encode(f, "TIFF"), 4, name="f.tif")
    assert gray is True and array[0, :, 0].tolist() == [0, 10, 255, 100]


def test_bilevel_mode_1() -> None:
    img = Image.new("1", (8, 8), 0)
    img.paste(1, (4, 0, 8, 8))
    array, gray = decode_image(encode(img, "PNG"), 8, name="b.png")
    assert gray is True
    assert (array[:, :4] == 0).all() and (array[:, 4:] == 255).all()


def test_cmyk_jpeg_cyan() -> None:
    data = encode(flat("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)
    array, gray = decode_image(data, 8, name="cmyk.jpg")
    assert gray is False
    r, g, b = array.reshape(-1, 3).mean(axis=0)
    assert r < 30 and g > 225 and b > 225


# --- orientation and geometry ----------------------------------------------------------------


def left_marked(width: int = 40, height: int = 20) -> Image.Image:
    """White image whose left half is red: where a viewer shows red tells the rotation."""
    img = flat("RGB", (width, height), (255, 255, 255))
    img.paste(RED, (0, 0, width // 2, height))
    return img


def red_mask(array: np.ndarray) -> np.ndarray:
    return (array[..., 0] > 200) & (array[..., 1] < 80) & (array[..., 2] < 80)


@pytest.mark.parametrize(
    ("orientation", "red_side"),
    # 1: as stored (red left); 6: viewer rotates 90 deg clockwise (stored left -> top);
    # 8: viewer rotates 90 deg counter-clockwise (stored left -> bottom)
    [(1, "left"), (6, "top"), (8, "bottom")],
)
def test_exif_orientation_applied(orientation: int, red_side: str) -> None:
    data = exif_rotated_jpeg(left_marked(40, 20), orientation)
    array, _ = decode_image(data, 20, name="rot.jpg")
    assert_rgb(array, 20)
    # displayed 40x20 or 20x40; the centre crop keeps the middle 20 of the 40 pixels, half red
    red = red_mask(array)
    halves = {
        "left": (red[:, :8], red[:, 12:]),
        "right": (red[:, 12:], red[:, :8]),
        "top": (red[:8], red[12:]),
        "bottom": (red[12:], red[:8]),
    }
    marked, unmarked = halves[red_side]
    assert marked.all() and not unmarked.any()


def test_probe_size_reads_header_and_honours_exif() -> None:
    data = exif_rotated_jpeg(left_marked(40, 20), 6)
    assert probe_size(data, name="p.jpg") == (20, 40)
    assert probe_size(encode(left_marked(40, 20), "PNG"), name="p.png") == (40, 20)
    with pytest.raises(DataError, match="p.txt"):
        probe_size(b"hello", name="p.txt")


def test_non_square_centre_crop() -> None:
    img = flat("RGB", (60, 30), GREEN)
    img.paste(RED, (0, 0, 20, 30))
    img.paste(BLUE, (40, 0, 60, 30))
    array, _ = decode_image(encode(img, "PNG"), 16, name="wide.png")
    assert_rgb(array, 16)
    # 60x30 -> 32x16, columns 8..23 kept = source columns 15..45: green centre, thin red/blue
    # rims of equal width (a left- or right-aligned crop would lose one of them)
    assert (array[:, 3:13] == GREEN).all()
    assert (array[:, 0] == RED).all() and (array[:, 15] == BLUE).all()
    tall = img.transpose(Image.Transpose.ROTATE_90)  # 30x60, blue on top: crop is vertical
    array, _ = decode_image(encode(tall, "PNG"), 16, name="tall.png")
    assert (array[3:13] == GREEN).all()
    assert (array[0] == BLUE).all() and (array[15] == RED).all()


def test_small_image_upscaled() -> None:
    img = flat("RGB", (8, 8), BLUE)
    img.paste(RED, (0, 0, 4, 8))
    array, _ = decode_image(encode(img, "PNG"), 32, name="small.png")
    assert_rgb(array, 32)
    assert (array[:, :14] == RED).all() and (array[:, 18:] == BLUE).all()


def test_large_jpeg_downscaled() -> None:
    img = flat("RGB", (3000, 2000), (200, 30, 40))
    array, gray = decode_image(encode(img, "JPEG", quality=90), 64, name="big.jpg")
    assert_rgb(array, 64)
    assert gray is False
    assert np.abs(array.astype(int) - (200, 30, 40)).max() <= 6


def test_large_jpeg_draft_close_to_full_decode(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hashcondense.data.images")
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, 1200)
    pixels = np.stack(np.broadcast_arrays(x[None, :], x[:600, None], 128 + 0 * x[None, :]), -1)
    noisy = np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)
    data = encode(Image.fromarray(noisy), "JPEG", quality=90)
    array, _ = decode_image(data, 32, name="draft.jpg")
    assert "draft" in caplog.text  # 600 > 4 * 32: the reduced-scale path really ran
    ref = Image.open(io.BytesIO(data)).convert("RGB").resize((64, 32), Image.Resampling.BILINEAR)
    ref_array = np.asarray(ref)[:, 16:48]
    assert np.abs(array.astype(int) - ref_array).mean() < 3


def test_square_jpeg_equals_plain_resize() -> None:
    rng = np.random.default_rng(1)
    data = encode(Image.fromarray(rng.integers(0, 256, (128, 128, 3), np.uint8)), "JPEG")
    plain = Image.open(io.BytesIO(data)).convert("RGB")
    expected = np.asarray(plain.resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(decode_image(data, 32, name="sq.jpg")[0], expected)
    np.testing.assert_array_equal(decode_image(data, 128, name="sq.jpg")[0], np.asarray(plain))


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "TIFF", "PPM", "PNG", "JPEG"])
@pytest.mark.parametrize("channel", [0, 1, 2])
def test_format_channel_order(fmt: str, channel: int) -> None:
    color = [0, 0, 0]
    color[channel] = 255
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(flat("RGB", (24, 12), tuple(color)), fmt, **kwargs)
    array, gray = decode_image(data, 10, name=f"x.{fmt.lower()}")
    assert_rgb(array, 10)
    assert gray is False
    assert (array[..., channel] >= 250).all()
    assert (np.delete(array, channel, axis=2) <= 5).all()


def test_pgm_is_grayscale() -> None:
    array, gray = decode_image(encode(flat("L", (6, 6), 90), "PPM"), 6, name="x.pgm")
    assert gray is True and (array == 90).all()


def test_gif_first_frame() -> None:
    frames = [flat("RGB", (12, 12), RED), flat("RGB", (12, 12), BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
    array, gray = decode_image(buf.getvalue(), 12, name="anim.gif")
    assert gray is False
    assert (array == RED).all()


# --- errors ----------------------------------------------------------------------------------


def test_truncated_jpeg() -> None:
    rng = np.random.default_rng(2)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)), "JPEG")
    with pytest.raises(DataError, match=r"cannot decode image cut\.jpg: "):
        decode_image(data[: len(data) // 2], 32, name="cut.jpg")


@pytest.mark.parametrize("data", [b"just some notes\nnot an image\n", b""])
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(DataError, match=r"x\.jpg") as info:
        decode_image(data, 32, name="x.jpg")
    assert "\n" not in str(info.value)


def test_ghostscript_formats_refused() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(DataError, match="e.jpg"):
        decode_image(eps, 8, name="e.jpg")


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 20_000])  # over 1x (warning) and 2x (error) limit
def test_decompression_bomb(side: int) -> None:
    before = (Image.MAX_IMAGE_PIXELS, list(warnings.filters))
    with pytest.raises(DataError, match=r"bomb\.png.*decompression bomb"):
        decode_image(png_header_only(side, side), 32, name="bomb.png")
    with pytest.raises(DataError, match=r"bomb\.png"):
        probe_size(png_header_only(side, side), name="bomb.png")
    assert (Image.MAX_IMAGE_PIXELS, list(warnings.filters)) == before


@pytest.mark.parametrize("resolution", [0, -1, 2.5, True, "32"])
def test_bad_resolution(resolution) -> None:
    data = encode(flat("RGB", (8, 8), RED), "PNG")
    with pytest.raises(DataError, match="resolution"):
        decode_image(data, resolution, name="ok.png")


def test_numpy_int_resolution_accepted() -> None:
    array, _ = decode_image(encode(flat("RGB", (8, 8), RED), "PNG"), np.int64(4), name="n.png")
    assert_rgb(array, 4)


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b.JPG", True),
        ("b.jpeg", True),
        ("./train/cat/1.png", True),
        ("a/.DS_Store", False),
        ("__MACOSX/a/._b.jpg", False),
        ("a/._b.jpg", False),
        ("a/.hidden/b.jpg", False),
        ("x/__MACOSX/b.jpg", False),
        ("a/notes.txt", False),
        ("a/jpg", False),
        (".jpg", False),
        ("", False),
    ],
)
def test_is_image_name(name: str, expected: bool) -> None:
    assert is_image_name(name) is expected


def test_extensions() -> None:
    assert {".jpg", ".png", ".webp", ".tiff", ".pgm"} <= IMAGE_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)
