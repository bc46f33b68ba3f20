"""Decode one image (a file, or bytes in memory) into a ``uint8`` array, turning every way it
can fail into a DataError."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from graft.errors import DataError

#: Largest image accepted, in pixels (50 megapixels: far above anything a classifier needs,
#: far below what would exhaust memory). Checked by graft itself, so PIL's global
#: ``Image.MAX_IMAGE_PIXELS`` (which other code may rely on) is left alone.
MAX_IMAGE_PIXELS = 50_000_000

_GREY_16BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_HINT = "replace or delete the file"


def _bad(path: Path, what: str, hint: str = _HINT) -> DataError:
    return DataError(f"{path}: {what}", hint=hint)


def _to_uint8_grey(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map a high-bit-depth grey image onto 0..255.

    16-bit images keep their full range (divide by 257, so 65535 -> 255). 32-bit int ("I") and
    float ("F") images have no fixed range, so go by the values: floats within 0..1 are scaled
    by 255; values within 0..255 are kept; ints within 0..65535 are treated as 16-bit;
    anything else is min-max scaled.
    """
    a = arr.astype(np.float64)
    if mode in _GREY_16BIT:
        scaled = a / 257.0
    else:
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if mode == "F" and lo >= 0 and hi <= 1:
            scaled = a * 255.0
        elif lo >= 0 and hi <= 255:
            scaled = a
        elif mode == "I" and lo >= 0 and hi <= 65535:
            scaled = a / 257.0
        else:
            scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def load_image(path: Path) -> np.ndarray:
    """Fully decode the image at ``path``.

    Returns ``uint8`` of shape (H, W) for grey images ("1", "L", 16/32-bit, float) and
    (H, W, 3) for everything else (RGBA, LA, P, CMYK, YCbCr ... become RGB; alpha is dropped).
    Animated images give their first frame. A missing, empty, truncated, corrupt, non-image or
    oversized (decompression-bomb) file raises :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _bad(path, "image file not found", "check the path") from None
    except OSError as e:
        raise _bad(path, f"cannot read image file ({e.strerror or e})") from None
    if path.is_dir():
        raise _bad(path, "is a folder, not an image file", "check the path")
    if size == 0:
        raise _bad(path, "empty file (0 bytes), not an image")
    return _decode(path, str(path), MAX_IMAGE_PIXELS)


def decode_image(data: bytes, origin: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Fully decode an image held in memory (an upload), like :func:`load_image` decodes a
    file; ``origin`` names it in errors, and an image over ``max_pixels`` is refused before
    its pixels are decoded."""
    if not data:
        raise DataError(f"{origin}: empty (0 bytes), not an image")
    return _decode(io.BytesIO(data), origin, max_pixels)


def _decode(source: Path | io.BytesIO, origin: str, max_pixels: int) -> np.ndarray:
    def bad(what: str, hint: str = _HINT) -> DataError:
        return DataError(f"{origin}: {what}", hint=hint)

    with warnings.catch_warnings():
        # PIL only *warns* between MAX_IMAGE_PIXELS and twice that; for us a bomb is an error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as im:
                w, h = im.size  # from the header: nothing is decoded yet
                if w * h > max_pixels:
                    raise bad(
                        f"image too large: {w}x{h} = {w * h:,} pixels "
                        f"(limit {max_pixels:,}; a possible decompression bomb)",
                        "downscale the image",
                    )
                if w == 0 or h == 0:
                    raise bad(f"image has zero size ({w}x{h})")
                im.load()  # decode every pixel now: verify() would miss truncated pixel data
                arr = _convert(im)
        except DataError:
            raise
        except Image.UnidentifiedImageError:
            raise bad("not an image, or a format Pillow cannot read") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise bad(f"image too large (a possible decompression bomb): {e}") from None
        except Exception as e:
            # Pillow's decoders raise a zoo of types for damaged files (OSError "image file is
            # truncated", SyntaxError, ValueError, EOFError, zlib.error, struct.error ...). Any
            # failure while decoding a user's file is that file's problem, so report it as such.
            detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise bad(f"truncated or corrupt image ({detail})") from None
    return arr


def pil_to_array(im: Image.Image) -> np.ndarray:
    """A PIL image held in memory as the ``uint8`` array a file of it decodes to."""
    return _convert(im)


def _convert(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "L":
        return np.array(im, dtype=np.uint8)
    if mode == "1":
        return np.array(im.convert("L"), dtype=np.uint8)
    if mode in _GREY_16BIT or mode in ("I", "F"):
        return _to_uint8_grey(np.array(im), mode)
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode == "P" and "transparency" in im.info:
        # Going through RGBA avoids Pillow's "palette with transparency" warning.
        im = im.convert("RGBA")
    return np.array(im.convert("RGB"), dtype=np.uint8)
