"""Archive I/O over fsspec: one code path for local folders and `s3://` buckets.

An Archive is a root URL plus a file system. Keys are POSIX paths relative to the root.
Listing is lazy (a generator), writes are atomic (no half-written file is ever visible),
and output keys can never resolve outside the root.
"""

from __future__ import annotations

import os
import posixpath
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec

from .errors import InputError, UsageError

IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
    ".pgm", ".ppm", ".pbm", ".pnm",
}
META_DIR = "_facepriv"


def storage_options(url: str, endpoint: str | None = None, retries: int = 5) -> dict[str, Any]:
    """fsspec options for a URL. Credentials come from the standard AWS variables."""
    if url.startswith("s3://"):
        opts: dict[str, Any] = {"config_kwargs": {"retries": {"max_attempts": retries, "mode": "standard"}}}
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        return opts
    return {}


@dataclass
class Archive:
    url: str
    options: dict[str, Any]

    def __post_init__(self) -> None:
        self.fs, root = fsspec.core.url_to_fs(self.url, **self.options)
        if self.fs.protocol in ("file", "local") or "file" in self.fs.protocol:
            root = os.path.realpath(root)
        self.root = root.rstrip("/") or "/"
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    # -- naming -------------------------------------------------------------------------
    def path(self, key: str) -> str:
        """Absolute path of a key, refusing anything that would escape the root."""
        norm = safe_key(key)
        return f"{self.root}/{norm}"

    def display(self, key: str) -> str:
        proto = "" if self.is_local else "s3://"
        return f"{proto}{self.path(key)}"

    # -- reading ------------------------------------------------------------------------
    def list_images(self) -> Iterator[str]:
        """Yield keys of candidate image files under the root, lazily and in sorted order.

        A candidate has an image extension or no extension at all (decoding decides).
        The `_facepriv` folder and hidden files are skipped; symlink loops are not followed.
        """
        if self.is_local:
            yield from self._walk_local()
            return
        for dirpath, dirs, files in self.fs.walk(self.root, detail=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != META_DIR)
            rel = posixpath.relpath(dirpath, self.root) if dirpath.rstrip("/") != self.root else ""
            for name in sorted(files):
                if _is_candidate(name):
                    yield posixpath.join(rel, name) if rel and rel != "." else name

    def _walk_local(self) -> Iterator[str]:
        seen: set[tuple[int, int]] = set()

        def walk(dirpath: str, rel: str) -> Iterator[str]:
            try:
                st = os.stat(dirpath)
            except OSError:
                return
            if (st.st_dev, st.st_ino) in seen:  # symlink loop or repeated folder
                return
            seen.add((st.st_dev, st.st_ino))
            try:
                entries = sorted(os.scandir(dirpath), key=lambda e: e.name)
            except OSError:
                return
            for e in entries:
                if e.name.startswith(".") or (not rel and e.name == META_DIR):
                    continue
                key = f"{rel}/{e.name}" if rel else e.name
                try:
                    if e.is_dir(follow_symlinks=True):
                        yield from walk(e.path, key)
                    elif _is_candidate(e.name):
                        yield key
                except OSError:
                    yield key  # broken link: it becomes an error row, not a silent skip

        yield from walk(self.root, "")

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            raise InputError("file vanished or is a broken link") from None
        except IsADirectoryError:
            raise InputError("is a directory") from None
        except PermissionError:
            raise InputError("permission denied") from None

    def size(self, key: str) -> int | None:
        try:
            return int(self.fs.size(self.path(key)))
        except Exception:  # noqa: BLE001
            return None

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    # -- writing ------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write atomically: a reader sees the old object, the whole new one, or nothing."""
        path = self.path(key)
        if self.is_local:
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.part")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:  # an object PUT is atomic
            _retry(lambda: self.fs.pipe_file(path, data))

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def invalidate(self) -> None:
        self.fs.invalidate_cache()


def _is_candidate(name: str) -> bool:
    if name.startswith("."):
        return False
    ext = posixpath.splitext(name)[1].lower()
    return ext in IMAGE_EXTENSIONS or ext == ""


def safe_key(key: str) -> str:
    """Normalise a relative key; refuse absolute keys and `..` segments that leave the root."""
    if "\x00" in key:
        raise InputError("key contains a NUL byte")
    norm = posixpath.normpath(key.replace("\\", "/")).lstrip("/") if key else ""
    if not norm or norm == "." or norm == ".." or norm.startswith("../"):
        raise InputError(f"key {key!r} would resolve outside the archive root; refused")
    return norm


def _retry(fn, attempts: int = 5, base: float = 0.2):
    for i in range(attempts):
        try:
            return fn()
        except (OSError, TimeoutError) as e:
            if isinstance(e, (FileNotFoundError, PermissionError)) or i == attempts - 1:
                raise
            time.sleep(base * 2**i)
    return None


def open_pair(src: str, dst: str, endpoint: str | None = None, retries: int = 5) -> tuple[Archive, Archive]:
    """Open SRC and DST, refusing DST equal to or inside SRC (we never write into the source)."""
    s = Archive(src, storage_options(src, endpoint, retries))
    d = Archive(dst, storage_options(dst, endpoint, retries))
    if s.is_local != d.is_local:
        return s, d
    sr, dr = s.root.rstrip("/") + "/", d.root.rstrip("/") + "/"
    if dr == sr or dr.startswith(sr):
        raise UsageError(
            f"DST ({dst}) is equal to or inside SRC ({src}); facepriv never writes into the "
            "source archive. Choose an output location outside SRC."
        )
    return s, d
