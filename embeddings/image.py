"""Safe image decoding: untrusted bytes, files, PIL images or arrays to H×W×3 uint8 RGB.

Limits are enforced before the pixels are decoded: the encoded size first, then the
width × height read from the header (Pillow opens lazily), and only then ``load()``.
Pillow's own decompression-bomb guard and its many decode errors are converted to
:class:`~embeddings.errors.ImageTooLarge` / :class:`~embeddings.errors.InvalidImage`.
Truncated files raise: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from embeddings.config import DecodeLimits
from embeddings.errors import ImageTooLarge, InvalidImage, LatentfaceError

__all__ = ["ALLOWED_FORMATS", "ImageSource", "decode_image"]

ImageSource = bytes | bytearray | memoryview | str | os.PathLike | Image.Image | np.ndarray

# Formats a camera, phone or browser produces. Anything else (PSD, EPS, ICNS, ...) is refused:
# every extra decoder is extra attack surface for no use. MPO is what many phones write as JPEG.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "AVIF")

_DEFAULT_LIMITS = DecodeLimits()

# Register every plugin now: Image.open(formats=...) looks each name up and fails on one whose
# plugin Pillow has not lazily loaded yet. Keep only those this Pillow build has.
Image.init()
_OPEN_FORMATS = tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def decode_image(source: ImageSource, *, limits: DecodeLimits = _DEFAULT_LIMITS) -> np.ndarray:
    """Decode ``source`` to a C-contiguous H×W×3 uint8 RGB array, upright per its EXIF orientation.

    ``source`` is encoded bytes, a file path, a ``PIL.Image.Image`` or an array (H×W, H×W×1,
    H×W×3 or H×W×4; uint8, or float in [0, 1]). Transparent pixels are composited on white.

    Raises ``ImageTooLarge`` when the encoded size or the pixel count is over ``limits``
    (checked before decoding), and ``InvalidImage`` for anything empty, truncated,
    undecodable, of an unsupported format, or with a side shorter than ``limits.min_side``.
    An array already in the output form is returned as is (no copy), so it shares memory.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, limits)
    if isinstance(source, Image.Image):
        return _from_pil(source, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(source), limits)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source), limits)
    raise InvalidImage(f"unsupported image source type {type(source).__name__}")


def _from_path(path: Path, limits: DecodeLimits) -> np.ndarray:
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise InvalidImage(f"image file not found: {path}") from exc
    except OSError as exc:
        raise InvalidImage(f"cannot read image file {path}: {exc}") from exc
    if not path.is_file():
        raise InvalidImage(f"not a regular file: {path}")
    _check_bytes(size, limits)  # refuse before reading a huge file into memory
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidImage(f"cannot read image file {path}: {exc}") from exc
    return _from_bytes(data, limits)


def _check_bytes(n: int, limits: DecodeLimits) -> None:
    if n == 0:
        raise InvalidImage("empty image data")
    if n > limits.max_bytes:
        raise ImageTooLarge(f"encoded image is {n} bytes, over the limit of {limits.max_bytes} bytes")


def _check_dims(width: int, height: int, limits: DecodeLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}"
        )
    if min(width, height) < limits.min_side:
        raise InvalidImage(
            f"image is {width}x{height}, smaller than the minimum side of {limits.min_side} px"
        )


def _from_bytes(data: bytes, limits: DecodeLimits) -> np.ndarray:
    _check_bytes(len(data), limits)
    try:
        img = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses at open() past 2x its own MAX_IMAGE_PIXELS (the warning only becomes
        # an exception under -W error); both mean "too many pixels".
        raise ImageTooLarge(f"image pixel count over the decompression-bomb limit: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        allowed = ", ".join(_OPEN_FORMATS)
        raise InvalidImage(f"unrecognised or unsupported image format (allowed: {allowed})") from exc
    except Exception as exc:  # Pillow's header parsers raise many types on hostile input
        raise InvalidImage(f"cannot parse image header: {exc}") from exc
    with img:
        return _from_pil(img, limits)


def _from_pil(img: Image.Image, limits: DecodeLimits) -> np.ndarray:
    width, height = img.size
    _check_dims(width, height, limits)  # header size known, pixels not yet decoded
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        arr = _to_rgb(img)
    except LatentfaceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image pixel count over the decompression-bomb limit: {exc}") from exc
    except Exception as exc:
        # Truncated data ("image file is truncated"), corrupt streams, zlib bombs in text chunks
        # and assorted parser bugs all surface here as OSError/ValueError/SyntaxError/...
        raise InvalidImage(f"cannot decode image: {exc}") from exc
    return np.ascontiguousarray(arr)


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _gray_to_rgb(_deep_gray_to_uint8(img))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _composite_on_white(np.asarray(img.convert("RGBA")))
    if mode in ("L", "1"):
        return _gray_to_rgb(np.asarray(img.convert("L"), dtype=np.uint8))
    if mode in ("P", "CMYK", "YCbCr", "HSV", "RGBX"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    raise InvalidImage(f"unsupported image mode {mode!r}")


def _deep_gray_to_uint8(img: Image.Image) -> np.ndarray:
    """16-bit and 32-bit grayscale to 8 bits.

    I;16 spans 0..65535. Mode I (32-bit int) is how older Pillows and some TIFFs expose
    16-bit data, so values above 255 are taken as 16-bit. Mode F is taken as [0, 1] when it
    fits there, else as [0, 255].
    """
    a = np.asarray(img)
    if img.mode == "F":
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise InvalidImage("float image contains NaN or infinity")
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    a = a.astype(np.int64)
    if img.mode.startswith("I;16") or a.max(initial=0) > 255:
        a = np.clip(a, 0, 65535)
        return ((a * 255 + 32767) // 65535).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[:, :, :3].astype(np.uint32)
    a = rgba[:, :, 3:4].astype(np.uint32)
    # Rounded integer blend: out = rgb * a/255 + 255 * (1 - a/255)
    out = (rgb * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _from_array(arr: np.ndarray, limits: DecodeLimits) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InvalidImage(f"array image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    height, width = arr.shape[:2]
    _check_dims(width, height, limits)
    if arr.dtype == np.uint8:
        u8 = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InvalidImage("float image contains NaN or infinity")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise InvalidImage("float image values must lie in [0, 1]")
        u8 = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise InvalidImage(f"array image dtype must be uint8 or float, got {arr.dtype}")
    if u8.ndim == 2:
        u8 = _gray_to_rgb(u8)
    elif u8.shape[2] == 4:
        u8 = _composite_on_white(u8)
    return np.ascontiguousarray(u8)
