"""decode_image: every accepted source and mode, EXIF orientation, and refusal of hostile input."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embeddings.config import DecodeLimits
from embeddings.errors import ImageTooLarge, InvalidImage, LimitExceeded
from embeddings.image import decode_image


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels but that carries no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def small(rng_module: np.random.Generator) -> np.ndarray:
    return rng_module.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def rng_module() -> np.random.Generator:
    return np.random.default_rng(7)


# --- sources -------------------------------------------------------------------------------------


def test_png_bytes_round_trip_exactly(small: np.ndarray) -> None:
    data = _encode(Image.fromarray(small), "PNG")
    for source in (data, bytearray(data), memoryview(data)):
        out = decode_image(source)
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, small)


def test_jpeg_bytes_close_to_original(astronaut: np.ndarray) -> None:
    out = decode_image(_encode(Image.fromarray(astronaut), "JPEG", quality=95))
    assert out.shape == (512, 512, 3)
    assert np.abs(out.astype(int) - astronaut).mean() < 3


def test_path_str_and_pathlib(tmp_path: Path, small: np.ndarray) -> None:
    p = tmp_path / "face.png"
    Image.fromarray(small).save(p)
    np.testing.assert_array_equal(decode_image(p), small)
    np.testing.assert_array_equal(decode_image(str(p)), small)


def test_missing_file_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="not found"):
        decode_image(tmp_path / "nope.jpg")


def test_pil_image(small: np.ndarray) -> None:
    np.testing.assert_array_equal(decode_image(Image.fromarray(small)), small)
    gray = Image.fromarray(small[:, :, 0])
    np.testing.assert_array_equal(decode_image(gray), np.repeat(small[:, :, :1], 3, axis=2))


def test_uint8_arrays_of_every_shape(small: np.ndarray) -> None:
    np.testing.assert_array_equal(decode_image(small), small)
    g = small[:, :, 1]
    expected = np.stack([g, g, g], axis=2)
    np.testing.assert_array_equal(decode_image(g), expected)
    np.testing.assert_array_equal(decode_image(g[:, :, None]), expected)
    # Non-contiguous input comes back C-contiguous.
    out = decode_image(small[:, ::-1])
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, small[:, ::-1])


def test_float_array_scaled_from_unit_range() -> None:
    arr = np.array([[0.0, 0.5, 1.0, 0.2]] * 20, dtype=np.float32)
    arr = np.repeat(arr, 5, axis=1)  # 20 x 20
    out = decode_image(arr)
    np.testing.assert_array_equal(out[0, ::5, 0], [0, 128, 255, 51])
    with pytest.raises(InvalidImage, match=r"\[0, 1\]"):
        decode_image(arr * 2)
    with pytest.raises(InvalidImage, match="NaN"):
        decode_image(np.full((20, 20), np.nan))


def test_rgba_array_composited_on_white() -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.array([0, 255, 128, 51] * 5, dtype=np.uint8)[None, :]
    out = decode_image(rgba)
    alpha = rgba[0, :4, 3].astype(int)
    expected_r = np.rint((200 * alpha + 255 * (255 - alpha)) / 255)
    expected_gb = np.rint(255 * (255 - alpha) / 255)
    np.testing.assert_allclose(out[0, :4, 0], expected_r, atol=1)
    np.testing.assert_allclose(out[0, :4, 1], expected_gb, atol=1)
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent → white
    assert out[0, 1].tolist() == [200, 0, 0]  # opaque → unchanged


@pytest.mark.parametrize(
    "arr, message",
    [
        (np.zeros((20, 20, 2), dtype=np.uint8), "shape"),
        (np.zeros((20,), dtype=np.uint8), "shape"),
        (np.zeros((20, 20, 3), dtype=np.int16), "dtype"),
        (np.zeros((1, 1, 3), dtype=np.uint8), "minimum side"),
    ],
)
def test_bad_arrays_are_invalid(arr: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        decode_image(arr)


def test_unsupported_source_type() -> None:
    with pytest.raises(InvalidImage, match="source type"):
        decode_image(12345)  # type: ignore[arg-type]


# --- modes -----------------------------------------------------------------------------------------


def test_grayscale_png(small: np.ndarray) -> None:
    g = small[:, :, 2]
    out = decode_image(_encode(Image.fromarray(g, mode="L"), "PNG"))
    np.testing.assert_array_equal(out, np.stack([g] * 3, axis=2))


def test_sixteen_bit_png_scaled_to_eight_bits() -> None:
    values = np.arange(0, 256, dtype=np.uint16).reshape(16, 16)
    data = _encode(Image.fromarray(values * 257), "PNG")  # 16-bit grayscale: 0..65535
    out = decode_image(data)
    np.testing.assert_array_equal(out[:, :, 0], values.astype(np.uint8))
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_float_tiff_in_unit_range() -> None:
    values = np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)
    out = decode_image(_encode(Image.fromarray(values, mode="F"), "TIFF"))
    np.testing.assert_array_equal(out[:, :, 1], np.rint(values * 255).astype(np.uint8))


def test_one_bit_png() -> None:
    bits = (np.indices((20, 20)).sum(axis=0) % 2).astype(bool)
    out = decode_image(_encode(Image.fromarray(bits), "PNG"))
    np.testing.assert_array_equal(out[:, :, 0], np.where(bits, 255, 0))


def test_rgba_png_and_la_png_composited_on_white() -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[:, :10] = [10, 20, 30, 255]
    rgba[:, 10:] = [10, 20, 30, 0]
    out = decode_image(_encode(Image.fromarray(rgba, mode="RGBA"), "PNG"))
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 15].tolist() == [255, 255, 255]

    la = Image.fromarray(rgba[:, :, [0, 3]], mode="LA")
    out = decode_image(_encode(la, "PNG"))
    assert out[0, 0].tolist() == [10, 10, 10]
    assert out[0, 15].tolist() == [255, 255, 255]


def test_palette_png_with_and_without_transparency() -> None:
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 250, 100, 50] + [0] * (254 * 3))
    pal.paste(0, (0, 0, 10, 20))
    out = decode_image(_encode(pal, "PNG"))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 15].tolist() == [250, 100, 50]

    out = decode_image(_encode(pal, "PNG", transparency=0))  # index 0 transparent
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 15].tolist() == [250, 100, 50]


def test_cmyk_tiff(small: np.ndarray) -> None:
    cmyk = Image.fromarray(small).convert("CMYK")
    out = decode_image(_encode(cmyk, "TIFF"))
    np.testing.assert_array_equal(out, small)  # Pillow's RGB↔CMYK (K = 0) is exact


def test_cmyk_jpeg(astronaut: np.ndarray) -> None:
    data = _encode(Image.fromarray(astronaut).convert("CMYK"), "JPEG", quality=95)
    out = decode_image(data)
    assert out.shape == (512, 512, 3)
    assert np.abs(out.astype(int) - astronaut).mean() < 4


# --- EXIF orientation ------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation, k", [(3, 2), (6, 3), (8, 1)])
def test_exif_orientation_applied(astronaut: np.ndarray, orientation: int, k: int) -> None:
    # Orientation 6 says "rotate 90° clockwise to display" (np.rot90 k=3 is clockwise), 8 the
    # opposite, 3 is 180°.
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(astronaut), "JPEG", quality=95, exif=exif)
    out = decode_image(data)
    expected = np.rot90(astronaut, k)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).mean() < 3
    # ...and clearly not one of the other orientations
    wrong = np.rot90(astronaut, (k + 1) % 4)
    assert np.abs(out.astype(int) - wrong).mean() > 30


# --- refusals --------------------------------------------------------------------------------------


def test_empty_and_random_bytes_are_invalid(rng: np.random.Generator) -> None:
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"")
    with pytest.raises(InvalidImage, match="unsupported"):
        decode_image(rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_raise_not_partial(astronaut: np.ndarray, fmt: str) -> None:
    data = _encode(Image.fromarray(astronaut), fmt)
    with pytest.raises(InvalidImage) as info:
        decode_image(data[: len(data) // 2])
    assert not isinstance(info.value, ImageTooLarge)


def test_unsupported_format_refused(small: np.ndarray) -> None:
    with pytest.raises(InvalidImage, match="unsupported"):
        decode_image(_encode(Image.fromarray(small), "PCX"))


def test_one_pixel_image_is_invalid() -> None:
    with pytest.raises(InvalidImage, match="minimum side"):
        decode_image(_encode(Image.new("RGB", (1, 1)), "PNG"))


def test_max_bytes_refused_before_decoding(tmp_path: Path, astronaut: np.ndarray) -> None:
    data = _encode(Image.fromarray(astronaut), "PNG")
    limits = DecodeLimits(max_bytes=len(data) - 1)
    with pytest.raises(ImageTooLarge, match=f"{len(data)} bytes.*{len(data) - 1}"):
        decode_image(data, limits=limits)
    p = tmp_path / "big.png"
    p.write_bytes(data)
    with pytest.raises(ImageTooLarge):
        decode_image(p, limits=limits)
    assert decode_image(data, limits=DecodeLimits(max_bytes=len(data))).shape == (512, 512, 3)


def test_pixel_limit_checked_from_header_before_decode() -> None:
    # No pixel data follows the header: decoding would fail as truncated (InvalidImage), so
    # ImageTooLarge proves the refusal happened before any decode.
    data = _png_header_only(8000, 6000)
    with pytest.raises(ImageTooLarge, match="8000x6000 = 48000000 pixels.*40000000"):
        decode_image(data)
    with pytest.raises(InvalidImage, match="decode") as info:
        decode_image(_png_header_only(100, 100))
    assert not isinstance(info.value, ImageTooLarge)


def test_decompression_bomb_header_refused() -> None:
    # 100k x 100k: Pillow's own guard refuses it at open(); it must come out as our error.
    with pytest.raises(ImageTooLarge):
        decode_image(_png_header_only(100_000, 100_000), limits=DecodeLimits(max_pixels=10**12))
    # Between Pillow's warning and error thresholds, with warnings turned into errors.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLarge):
            decode_image(_png_header_only(10_000, 10_000), limits=DecodeLimits(max_pixels=10**12))


def test_compressible_huge_png_refused_cheaply() -> None:
    # 4000 x 4000 black PNG: 48 MB of pixels in a few kB of file.
    data = _encode(Image.new("L", (4000, 4000)), "PNG")
    assert len(data) < 100_000
    with pytest.raises(ImageTooLarge, match="16000000 pixels"):
        decode_image(data, limits=DecodeLimits(max_pixels=1_000_000))


def test_image_too_large_is_a_limit_and_an_invalid_image() -> None:
    assert issubclass(ImageTooLarge, LimitExceeded) and issubclass(ImageTooLarge, InvalidImage)
