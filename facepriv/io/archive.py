"""Archive I/O over fsspec: one code path for local folders and `s3://` buckets.

An Archive is a root URL plus a file system. Keys are POSIX paths relative to the root.
Listing is lazy (a generator), writes are atomic (no half-written file is ever visible),
and output keys can never resolve outside the root.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec

from facepriv.errors import InputError, UsageError

IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
    ".pgm", ".ppm", ".pbm", ".pnm",
}
META_DIR = "_facepriv"


def storage_options(url: str, endpoint: str | None = None, retries: int = 5) -> dict[str, Any]:
    """fsspec options for a URL. Credentials come from the standard AWS variables.

    Retrying is facepriv's alone (`Archive.retries` attempts per call, see `_retry`): botocore
    is held to one attempt per request (`total_max_attempts: 1`; its `max_attempts` counts
    *retries*, so it would add N+1 attempts per facepriv attempt) and s3fs to one pass through
    its own retry loop (`S3FileSystem.retries = 1`, set on the Archive's file system: s3fs takes
    no such option). `--retries N` is then N attempts in total, not N x (N+1) x s3fs's 5.
    `retries` is accepted for a uniform signature; the count lives on the Archive.
    """
    del retries
    if url.startswith("s3://"):
        opts: dict[str, Any] = {"config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"}}}
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        return opts
    return {}


@dataclass
class Archive:
    url: str
    options: dict[str, Any]
    retries: int = 5  # attempts in total per storage call for transient errors (the only retry layer)

    def __post_init__(self) -> None:
        self.retries = max(1, int(self.retries))
        self.fs, root = fsspec.core.url_to_fs(self.url, **self.options)
        if hasattr(self.fs, "call_s3"):
            self.fs.retries = 1  # s3fs's own retry loop: one pass (facepriv's _retry counts the attempts)
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
        if hasattr(self.fs, "call_s3"):
            yield from self._walk_s3()
            return
        for dirpath, dirs, files in self.fs.walk(self.root, detail=False):  # other fsspec stores
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != META_DIR)
            rel = posixpath.relpath(dirpath, self.root) if dirpath.rstrip("/") != self.root else ""
            for name in sorted(files):
                if _is_candidate(name):
                    yield posixpath.join(rel, name) if rel and rel != "." else name

    def _walk_s3(self) -> Iterator[str]:
        """Flat, paginated object listing (S3 order): every object key under the prefix, as is.

        Keys an object store can hold but a path cannot (`a/../b.jpg`, `a//b.jpg`, `./c.jpg`)
        are yielded too, so they get an error row (safe_key refuses them) instead of vanishing
        or aliasing another file. Folder markers (keys ending in `/`) are not objects to cloak.
        """
        bucket, _, prefix = self.root.partition("/")
        prefix = f"{prefix.rstrip('/')}/" if prefix else ""
        token = None
        while True:
            kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                kw["ContinuationToken"] = token
            page = _retry(lambda: self.fs.call_s3("list_objects_v2", **kw), self.retries)
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or rel.endswith("/"):
                    continue
                parts = rel.split("/")
                if parts[0] == META_DIR or any(p.startswith(".") and p not in (".", "..") for p in parts):
                    continue
                if _is_candidate(parts[-1]):
                    yield rel
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

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
        """Read one object; transient errors are retried, permanent ones raise InputError."""
        path = self.path(key)
        try:
            return _retry(lambda: self.fs.cat_file(path), self.retries)
        except FileNotFoundError:
            raise InputError("file vanished or is a broken link") from None
        except IsADirectoryError:
            raise InputError("is a directory") from None
        except PermissionError:
            raise InputError("permission denied") from None
        except Exception as e:  # noqa: BLE001 - messages carry no paths, endpoints or credentials
            if is_transient(e):
                raise InputError(f"storage error after {self.retries} attempt(s): {_short(e)}") from None
            if isinstance(e, OSError) and e.strerror:
                raise InputError(f"cannot read: {e.strerror}") from None
            raise InputError(f"cannot read: {_short(e)}") from None

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
            real = os.path.realpath(parent)
            if real != self.root and not real.startswith(self.root.rstrip("/") + "/"):
                raise InputError(f"output folder of {key!r} is a link that leaves DST; refused")
            tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.part")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:  # an object PUT is atomic
            _retry(lambda: self.fs.pipe_file(path, data), self.retries)

    def write_file(self, key: str, local_path: str) -> None:
        """Write a local file's contents to key, atomically and without holding it in memory
        (an S3 upload, multipart for a large file, becomes visible only when complete)."""
        path = self.path(key)
        if self.is_local:
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.part")
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, path)
        else:
            _retry(lambda: self.fs.put_file(local_path, path), self.retries)

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
    """Check a relative key: it must name a path strictly inside the root, as written.

    Keys are never normalised: on an object store `a/../b.jpg` is a real key, distinct from
    `b.jpg`; normalising it would read or overwrite another object. So any empty, `.` or `..`
    segment, a leading `/` or a NUL byte is refused (the photo gets an error row).
    """
    if "\x00" in key:
        raise InputError("key contains a NUL byte; refused")
    if not key or key.startswith("/"):
        raise InputError(f"key {key!r} is empty or absolute; refused")
    for seg in key.split("/"):
        if seg in (".", ".."):
            raise InputError(
                f"key {key!r} has a {seg!r} path segment; refused, because its output path would "
                "alias another file or resolve outside DST (rename the object)"
            )
        if not seg:
            raise InputError(f"key {key!r} has an empty path segment ('//'); refused (rename the object)")
    return key


TRANSIENT_CODES = {"500", "502", "503", "504", "SlowDown", "Throttling", "ThrottlingException",
                   "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable"}


def is_transient(e: BaseException) -> bool:
    """Worth retrying: connection/timeouts and 5xx/throttling answers, not 4xx or missing keys."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, InputError)):
        return False
    if isinstance(e, (TimeoutError, ConnectionError)):
        return True
    # s3fs turns a botocore ClientError into an OSError (e.g. 503 -> EBUSY) whose cause keeps the answer
    answer = next((getattr(x, "response", None) for x in (e, e.__cause__) if isinstance(
        getattr(x, "response", None), dict)), None)
    if answer is not None:
        code = str(answer.get("Error", {}).get("Code", ""))
        status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code or status:
            return code in TRANSIENT_CODES or status in (500, 502, 503, 504)
    name = type(e).__name__
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                "ResponseStreamingError", "IncompleteReadError", "ServerDisconnectedError",
                "ClientPayloadError"):
        return True
    if isinstance(e, OSError) and e.errno is None:  # s3fs wraps unknown service errors as OSError
        return any(c in str(e) for c in TRANSIENT_CODES)
    return False


def _sleep(seconds: float) -> None:
    """The backoff wait of `_retry` (looked up at call time, so a test can replace it here)."""
    time.sleep(seconds)


def _retry(fn, attempts: int = 5, base: float = 0.2, sleep=None):
    """Call fn at most `attempts` times, retrying transient errors with exponential backoff
    (base * 2**i seconds, at most 10 s, between attempts; none after the last)."""
    attempts = max(1, int(attempts))
    sleep = sleep or _sleep
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            if not is_transient(e) or i == attempts - 1:
                raise
            sleep(min(base * 2**i, 10.0))
    return None


def _short(e: BaseException) -> str:
    """One line of an exception for a manifest reason, with URLs (endpoints) and paths removed."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    msg = re.sub(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+", "<url>", msg)
    msg = re.sub(r"(?<![\w.])/[^\s'\"]+", "<path>", msg)
    return f"{type(e).__name__}: {msg[:200]}" if msg else type(e).__name__


def open_pair(src: str, dst: str, endpoint: str | None = None, retries: int = 5) -> tuple[Archive, Archive]:
    """Open SRC and DST, refusing DST equal to or inside SRC (we never write into the source)."""
    s = Archive(src, storage_options(src, endpoint, retries), retries)
    d = Archive(dst, storage_options(dst, endpoint, retries), retries)
    if s.is_local != d.is_local:
        return s, d
    sr, dr = s.root.rstrip("/") + "/", d.root.rstrip("/") + "/"
    if dr == sr or dr.startswith(sr):
        raise UsageError(
            f"DST ({dst}) is equal to or inside SRC ({src}); facepriv never writes into the "
            "source archive. Choose an output location outside SRC."
        )
    if sr.startswith(dr):
        raise UsageError(
            f"SRC ({src}) lies inside DST ({dst}): an output written at DST/<key> could land on a "
            "source photo. Choose an output location that does not contain SRC."
        )
    return s, d
