"""A hostile-input corpus, generated on the fly (nothing downloaded).

`build(root)` writes the corpus under a local folder and returns {key: Expect}. `s3_keys()`
adds keys that only an object store can hold (`a/../b.jpg`). Every entry says what facepriv
must do with it: `error` with a reason containing `reason`, or be cloaked (`ok`/`no_face`).

Real faces come from tests/fixtures/lfw (copied into the repository), so a plain clone works.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FACE = FIXTURES / "lfw" / "Colin_Powell" / "Colin_Powell_0001.jpg"
FACE2 = FIXTURES / "lfw" / "Gerhard_Schroeder" / "Gerhard_Schroeder_0001.jpg"
GOOD = ("ok", "no_face")


@dataclass
class Expect:
    statuses: tuple[str, ...]  # acceptable statuses
    reason: str | None = None  # substring the reason must contain (error rows)
    size: tuple[int, int] | None = None  # expected upright (width, height) of the output


def err(reason: str) -> Expect:
    return Expect(("error",), reason)


def face_rgb() -> np.ndarray:
    return np.array(Image.open(FACE).convert("RGB"))


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def png_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A tiny PNG whose header claims width x height 1-bit pixels (never fully decodable)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(row * 16, 9)  # a few rows only: a decoder would run out of data
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def oriented(orientation: int) -> bytes:
    """The face photo stored so that applying EXIF `orientation` shows it upright."""
    up = Image.open(FACE).convert("RGB").crop((0, 0, 250, 200))  # non-square: transposes show
    inverse = {
        1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = up.transpose(inverse) if inverse is not None else up
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(stored, exif=exif.tobytes())


def with_gps() -> bytes:
    """The face photo with GPS coordinates, a camera make/model and an orientation tag."""
    exif = Image.Exif()
    exif[0x010F] = "FacePrivCam"  # Make
    exif[0x0110] = "Model X"  # Model
    exif[0x0112] = 1
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (52.0, 31.0, 12.0)
    gps[3] = "E"
    gps[4] = (13.0, 24.0, 36.0)
    return jpeg(Image.open(FACE).convert("RGB"), exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.open(FACE).convert("P"), Image.open(FACE2).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    return buf.getvalue()


def files() -> dict[str, tuple[bytes, Expect]]:
    """Corpus entries as {key: (content, expectation)}; keys are valid local file names."""
    rng = np.random.default_rng(0)
    face = Image.open(FACE).convert("RGB")
    good_jpeg = FACE.read_bytes()
    rgba = face.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(64, 255, 250, dtype=np.uint8), (250, 1))))
    pal = face.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    buf = io.BytesIO()
    face.save(buf, "WEBP", quality=90)
    webp = buf.getvalue()
    g16 = Image.fromarray(np.asarray(face.convert("L"), np.uint16) * 257)  # mode I;16
    out: dict[str, tuple[bytes, Expect]] = {
        # broken or lying content
        "bad/zero_bytes.jpg": (b"", err("empty file")),
        "bad/truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], err("truncated")),
        "bad/random_bytes.jpg": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), err("not an image")),
        "bad/text.jpg": (b"just some notes, not a photo\n" * 20, err("not an image")),
        "bad/page.png": (b"<!doctype html><html><body><img src=x.jpg></body></html>", err("not an image")),
        "bad/deep/a/b/c/d/e/f/readme.jpeg": (b"# deep folder\nnot an image at all\n", err("not an image")),
        "bad/bomb_40000x40000.png": (png_bomb(), err("exceeds the limit")),
        "bad/animated.gif": (animated_gif(), err("animated")),
        # valid photos in odd clothing: cloaked, written in their own format
        "odd/webp_named.jpg": (webp, Expect(GOOD, size=(250, 250))),
        "odd/rgba_named.jpg": (png(rgba), Expect(GOOD, size=(250, 250))),
        "odd/cmyk.jpg": (jpeg(face.convert("CMYK")), Expect(GOOD, size=(250, 250))),
        "odd/gray16.png": (png(g16), Expect(GOOD, size=(250, 250))),
        "odd/palette_transparent.png": (png(pal, transparency=0), Expect(GOOD, size=(250, 250))),
        "odd/grayscale.jpg": (jpeg(face.convert("L")), Expect(GOOD, size=(250, 250))),
        "odd/tiny_10x10.png": (png(face.resize((10, 10))), Expect(GOOD, size=(10, 10))),
        "odd/strip_20000x20.png": (png(face.resize((20000, 20))), Expect(GOOD, size=(20000, 20))),
        "odd/gps.jpg": (with_gps(), Expect(GOOD, size=(250, 250))),
        # awkward names
        "names/with space.jpg": (good_jpeg, Expect(GOOD, size=(250, 250))),
        "names/ünïcødé 名前 😀.jpg": (good_jpeg, Expect(GOOD, size=(250, 250))),
        "names/dots..in..name.jpg": (good_jpeg, Expect(GOOD, size=(250, 250))),
        "names/noextension": (good_jpeg, Expect(GOOD, size=(250, 250))),
    }
    for o in range(1, 9):  # stored transposed for 5-8; upright is always 250x200
        out[f"exif/orientation_{o}.jpg"] = (oriented(o), Expect(GOOD, size=(250, 200)))
    return out


def build(root: Path, symlink_loop: bool = True) -> dict[str, Expect]:
    """Write the corpus under `root`; returns {key: Expect} for every file a listing must yield."""
    expect: dict[str, Expect] = {}
    for key, (data, ex) in files().items():
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        expect[key] = ex
    if symlink_loop:
        # a folder symlink pointing at an ancestor (a loop) and a file symlink pointing at itself
        os.symlink("..", root / "names" / "loop")
        os.symlink("self_loop.jpg", root / "bad" / "self_loop.jpg")
        expect["bad/self_loop.jpg"] = err("symbolic links")
    return expect


def s3_objects() -> dict[str, tuple[bytes, Expect]]:
    """Object-store-only keys: `..` and `.` segments would alias other paths, so they are refused."""
    good = FACE.read_bytes()
    return {
        "keys/a/../b.jpg": (good, err("'..'")),
        "keys/./c.jpg": (good, err("'.'")),
    }
