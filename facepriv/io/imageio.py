"""Decoding and encoding photos with Pillow, bytes in and bytes out (no file system here).

A photo is decoded to an upright RGB uint8 array (EXIF orientation applied) plus what is
needed to write it back in its own format: the alpha channel, the original mode (grayscale,
16-bit), the ICC profile and, when asked, the EXIF fields other than location.
The format is read from the content, never from the file name.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facepriv.core.settings import DEFAULT_MAX_PIXELS
from facepriv.errors import InputError

# Formats we write back as themselves. Anything else Pillow can read is written as PNG
# under the same key (the manifest records it), because lossy or exotic writers would
# destroy the cloak or not exist.
WRITABLE = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM"}
# Our own limit (`max_pixels`, --max-pixels) is checked after reading the header and before
# any pixel is decoded; Pillow's fixed global limit would override a user's choice either way.
Image.MAX_IMAGE_PIXELS = None
GPS_IFD = 0x8825
ORIENTATION = 0x0112


@dataclass
class Decoded:
    rgb: np.ndarray  # H x W x 3 uint8, upright
    format: str  # Pillow format name read from the content ("JPEG", "PNG", ...)
    mode: str  # original Pillow mode ("RGB", "L", "RGBA", "I;16", "CMYK", ...)
    alpha: np.ndarray | None = None  # H x W uint8 when the photo has transparency
    gray16: np.ndarray | None = None  # H x W uint16 for 16-bit grayscale originals
    icc_profile: bytes | None = None
    exif: Image.Exif | None = None
    frames: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the upright photo."""
        return self.rgb.shape[1], self.rgb.shape[0]


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode image bytes; raises InputError with a user-readable reason on bad input."""
    if not data:
        raise InputError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InputError("not an image: the content is no format Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"refused: image too large ({e})") from None
    except Image.DecompressionBombWarning as e:
        raise InputError(f"refused: image too large ({e})") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds on garbage
        raise InputError(f"cannot open image: {type(e).__name__}: {e}") from None

    fmt = img.format or "UNKNOWN"
    w, h = img.size
    if w * h > max_pixels:
        raise InputError(
            f"refused: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
            "(raise --max-pixels to allow it)"
        )
    try:
        frames = int(getattr(img, "n_frames", 1))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"corrupt or truncated {fmt} data: {e}") from None
    if frames > 1:
        # Cloaking only the first frame would drop the rest or leave uncloaked faces in them.
        raise InputError(
            f"refused: animated or multi-frame {fmt} ({frames} frames); facepriv cloaks still images "
            "only, so nothing was written for it (extract the frames to cloak them)"
        )
    try:
        img.load()
        exif = img.getexif()
        upright = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"corrupt or truncated {fmt} data: {e}") from None

    mode = img.mode
    icc = img.info.get("icc_profile")
    out = Decoded(rgb=np.zeros((1, 1, 3), np.uint8), format=fmt, mode=mode, icc_profile=icc,
                  exif=exif if len(exif) else None, frames=frames)

    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(upright, dtype=np.int64)
        if mode == "I" and arr.max(initial=0) <= 255:
            g8 = arr.clip(0, 255).astype(np.uint8)
        else:
            g16 = arr.clip(0, 65535).astype(np.uint16)
            out.gray16 = g16
            g8 = ((g16.astype(np.uint32) + 128) // 257).astype(np.uint8)
        out.rgb = np.repeat(g8[..., None], 3, axis=2)
        return out
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info) or (
        mode in ("RGB", "L") and "transparency" in img.info
    ):
        rgba = upright.convert("RGBA")
        arr = np.array(rgba)
        out.rgb = np.ascontiguousarray(arr[..., :3])
        out.alpha = np.ascontiguousarray(arr[..., 3])
        return out
    if mode == "CMYK":
        out.notes.append("CMYK converted to RGB")
    elif mode not in ("RGB", "L", "P", "1"):
        out.notes.append(f"mode {mode} converted to RGB")
    out.rgb = np.array(upright.convert("RGB"))
    return out


def _exif_without_location(exif: Image.Exif | None) -> bytes | None:
    if exif is None:
        return None
    kept = Image.Exif()
    for tag, value in exif.items():
        if tag in (GPS_IFD, ORIENTATION):
            continue
        kept[tag] = value
    return kept.tobytes() if len(kept) else None


def encode(
    rgb: np.ndarray,
    like: Decoded,
    jpeg_quality: int = 95,
    keep_metadata: bool = False,
) -> tuple[bytes, str]:
    """Encode an RGB uint8 array in the format (and mode) of the decoded original.

    Returns (bytes, format written). GPS and the orientation tag are always dropped (the
    pixels are written upright); other EXIF fields are kept only with keep_metadata.
    """
    fmt = like.format if like.format in WRITABLE else "PNG"
    gray = like.mode in ("L", "LA", "1", "I;16", "I;16B", "I;16L", "I") or (
        like.mode == "P" and _is_gray(like.rgb)
    )
    if like.gray16 is not None:
        # Keep the original 16-bit precision; add the cloak's change scaled to 16 bits.
        old8 = like.rgb[..., 0].astype(np.int32)
        new8 = _to_gray(rgb).astype(np.int32)
        g16 = (like.gray16.astype(np.int32) + (new8 - old8) * 257).clip(0, 65535)
        img = Image.fromarray(g16.astype(np.uint16))
        if fmt not in ("PNG", "TIFF"):
            fmt = "PNG"
    elif like.alpha is not None:
        base = _to_gray(rgb) if gray else rgb
        img = Image.fromarray(base).convert("RGBA" if not gray else "LA")
        img.putalpha(Image.fromarray(like.alpha))
        if fmt == "JPEG":  # cannot carry alpha
            img = img.convert("RGB")
        elif fmt == "GIF":
            img = img.convert("RGBA")
    elif gray:
        img = Image.fromarray(_to_gray(rgb))
    else:
        img = Image.fromarray(rgb)

    kwargs: dict = {}
    if like.icc_profile and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kwargs["icc_profile"] = like.icc_profile
    if keep_metadata:
        ex = _exif_without_location(like.exif)
        if ex and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
            kwargs["exif"] = ex
    if fmt == "JPEG":
        kwargs.update(jpeg_options(jpeg_quality))
    elif fmt == "WEBP":
        kwargs.update(quality=jpeg_quality, method=4)
    elif fmt == "PNG":
        kwargs.update(compress_level=6)
    elif fmt == "TIFF":
        kwargs.update(compression="tiff_lzw")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue(), fmt


def window(like: Decoded, box: tuple[int, int, int, int]) -> Decoded:
    """What `encode` needs to write the pixels of a window (x0, y0, x1, y1) of a photo as it
    writes the whole photo: the same format and mode, the window of its alpha / 16-bit
    planes (no metadata: it does not change pixels). A palette photo keeps the whole photo's
    gray-or-colour decision."""
    x0, y0, x1, y1 = box
    mode = like.mode
    if mode == "P":
        mode = "L" if _is_gray(like.rgb) else "RGB"
    return Decoded(rgb=like.rgb[y0:y1, x0:x1], format=like.format, mode=mode,
                   alpha=None if like.alpha is None else like.alpha[y0:y1, x0:x1],
                   gray16=None if like.gray16 is None else like.gray16[y0:y1, x0:x1])


def writer(like: Decoded, jpeg_quality: int = 95, keep_metadata: bool = False):
    """write(pixels, window) -> what the file `encode` writes holds in `window` (x0, y0, x1, y1)
    when the photo holds `pixels` there: the whole photo (window (0, 0, W, H)) encoded exactly as
    the pipeline writes it, or the window alone (`window`; for JPEG the same pixels as the
    whole file's inside it, away from its edges, when it is aligned to the 16 px MCU grid)."""
    full = (0, 0, like.rgb.shape[1], like.rgb.shape[0])

    def write(pixels: np.ndarray, win) -> np.ndarray:
        if tuple(win) == full:
            data, _ = encode(pixels, like, jpeg_quality, keep_metadata)
        else:
            data, _ = encode(pixels, window(like, win), jpeg_quality, False)
        return decode(data, max_pixels=2**62).rgb

    return write


def jpeg_options(quality: int) -> dict:
    """Pillow's JPEG save options for an output quality (full chroma from q90 up)."""
    return {"quality": quality, "subsampling": 0 if quality >= 90 else 2}


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """What a JPEG written by `encode` at `quality` holds for these uint8 RGB pixels."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", **jpeg_options(quality))
    return np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    # Mean of channels keeps a channel-uniform cloak exact; Pillow's L uses luma weights.
    return np.round(rgb.astype(np.float32).mean(axis=2)).astype(np.uint8)
