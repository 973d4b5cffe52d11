"""The harness behind `facepriv bench` (benchmarks/, not library code): facepriv against what users would otherwise run, measured side by side.

A benchmark, never a test: every number comes from one run of `run_bench` on one machine,
and every ratio is of two numbers measured in that run. What it measures, on the same
photos (copied into a temporary SRC) with the same surrogate checkpoint:

* facepriv `cloak` (the in-process pipeline, `facepriv.distributed.runner.run_in_process`, default
  settings: FGSM eps 8, and PGD-10 eps 4) - photos/s and faces/s of the timed call, after a
  warm-up run on a few photos (model loading and first-call costs excluded); optionally the
  Ray path (`run_cloak`) on the same photos, end to end;
* a naive baseline written the simplest way a user would (`naive_cloak`): per photo, PIL
  open, facenet-pytorch MTCNN, crop+resize each face to the model input, torchattacks FGSM
  (or PGD) with the same model, resize back, paste, PIL save, one photo at a time;
* the bare cost of the surrogate (`bare_seconds`): forward+backward of exactly the batches
  the pipeline's PGD-10 attack ran (faces per attack call x crop-jitter views, at the
  model's input size), `steps` times per batch. The pipeline run it is compared with forces
  every step (kappa = inf, so the per-face early stop never fires); the ratio is the
  pipeline's whole wall time (decode, detect, attack, encode, write, judge) over that;
* peak RSS of a cloak of N and of 10N photos (the same photos under new keys), each in its
  own fresh child process, which reports its own peak RSS (VmHWM) at the end;
* the product path, a preset (`--preset protect`, on by default when surrogates are
  installed; `run_preset`): photos/s and faces/s of the preset's cloak (embed-pgd on the
  preset's surrogate), its per-face cost over the surrogate's bare forward+backward x the
  preset's steps (the same face batches, timed in the same run: `bare_embed_seconds`), a
  breakdown of the wall time (`StageClock`: the manifest's timing columns split by timers
  wrapped around the strategy's stages - align, surrogate, quality term, write simulation,
  budget search, encode), and peak RSS for N and 10N photos. Without --model the
  classifier parts above are skipped.

Nothing here changes what a cloak writes; the functions are plain measurements with their
I/O in temporary folders.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facepriv.errors import FacePrivError
from facepriv.core.geometry import net_over_views

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TIMING_COLUMNS = ("t_read", "t_detect", "t_attack", "t_write", "t_judge")
BENCH_INSTALL_HINT = "pip install -e '.[bench]'"


# -- photos --------------------------------------------------------------------------------
def list_photos(dirs: list[str], limit: int | None = None) -> list[tuple[Path, str]]:
    """(file, key) for image files under each dir; the key is `<dir name>/<relative path>`.
    `limit` caps the photos taken from each dir (sorted order, spread over sub-folders)."""
    out: list[tuple[Path, str]] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise FacePrivError(f"photo folder {d!r} does not exist")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if limit is not None and len(files) > limit:
            # round-robin over sub-folders, so a limit keeps many identities rather than the first few
            by_dir: dict[Path, list[Path]] = {}
            for f in files:
                by_dir.setdefault(f.parent, []).append(f)
            picked: list[Path] = []
            queues = [list(v) for v in by_dir.values()]
            while len(picked) < limit and any(queues):
                for q in queues:
                    if q and len(picked) < limit:
                        picked.append(q.pop(0))
            files = sorted(picked)
        out += [(f, f"{root.name}/{f.relative_to(root).as_posix()}") for f in files]
    if not out:
        raise FacePrivError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) under {', '.join(dirs)}")
    return out


def stage(photos: list[tuple[Path, str]], root: Path, copies: int = 1) -> Path:
    """Copy photos under root (copy c > 0 goes under `c<c>/`: the same photo, a new key)."""
    root.mkdir(parents=True, exist_ok=True)
    for c in range(copies):
        for f, key in photos:
            out = root / (f"c{c}/{key}" if c else key)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out)
    return root


# -- facepriv --------------------------------------------------------------------------------
def run_facepriv(src: Path, dst: Path, settings, batch_size: int = 8) -> dict[str, Any]:
    """One in-process cloak (facepriv.distributed.runner.run_in_process) of src into a fresh dst:
    throughput, quality, the manifest's timing columns summed, and the faces per part."""
    from facepriv.io import manifest
    from facepriv.io.archive import Archive
    from facepriv.distributed.runner import run_in_process

    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run_in_process(str(src), str(dst), settings, batch_size=batch_size)
    wall = time.perf_counter() - t0
    a = Archive(str(dst), {})
    rdir = f"{a.root}/_facepriv/runs/{summary['run_id']}/manifest"
    parts = sorted(p for p in a.fs.find(rdir) if p.endswith(".parquet"))
    rows: list[dict] = []
    for p in parts:
        with a.fs.open(p, "rb") as f:
            import pyarrow.parquet as pq

            rows += pq.read_table(f, schema=manifest.SCHEMA).to_pylist()
    # the rows in the order the photos were cloaked, batch_size photos per pipeline call (a manifest
    # part holds any number of calls' rows: manifest.PartWriter)
    faces_per_call = [sum(r["n_faces"] or 0 for r in rows[i : i + batch_size] if r["status"] == "ok")
                      for i in range(0, len(rows), batch_size)]
    seconds = float(summary["seconds"])  # the timed loop: model loading excluded
    photos = len(rows)
    faces = sum(faces_per_call)
    breakdown = {k: float(sum(r[k] or 0.0 for r in rows)) for k in TIMING_COLUMNS}
    breakdown["other"] = max(0.0, seconds - sum(breakdown.values()))  # listing, manifest parts, pyarrow
    steps = [f["steps"] for r in rows if r["status"] == "ok" for f in (r["faces"] or []) if f.get("steps") is not None]
    return {
        "photos": photos, "faces": faces, "seconds": seconds, "wall_with_load": wall,
        "photos_per_s": photos / seconds if seconds else None, "faces_per_s": faces / seconds if seconds else None,
        "errors": summary["errors"], "fooling_rate": summary["fooling_rate"], "faces_judged": summary["faces_judged"],
        "psnr_mean": summary["psnr_mean"], "ssim_mean": summary["ssim_mean"],
        "breakdown_s": breakdown, "faces_per_call": faces_per_call,
        "attack_steps_per_face": float(np.mean(steps)) if steps else None,
    }


def run_facepriv_ray(src: Path, dst: Path, settings, batch_size: int = 8, workers: int | None = None) -> dict[str, Any]:
    """The same cloak through Ray (`run_cloak`), end to end (Ray start excluded, actor start
    and model loading included), and the steady rate from the rows' own finish times."""
    from facepriv.distributed.runner import init_ray, run_cloak

    shutil.rmtree(dst, ignore_errors=True)
    init_ray(None)
    finished: list[tuple[str, float]] = []
    s = run_cloak(str(src), str(dst), settings, workers=workers, batch_size=batch_size, progress=False,
                  log=lambda m: None, incremental=False,
                  on_rows=lambda rows: finished.extend((r["worker"], r["finished_at"].timestamp()) for r in rows))
    return {
        "photos": s["inputs"], "faces": s["faces"], "seconds": s["seconds"], "workers": s["workers"],
        "photos_per_s": s["images_per_second"], "faces_per_s": s["faces"] / s["seconds"] if s["seconds"] else None,
        "steady_photos_per_s": steady_rate(finished), "fooling_rate": s["fooling_rate"], "psnr_mean": s["psnr_mean"],
    }


def steady_rate(finished: list[tuple[str, float]]) -> float | None:
    """Photos/s once every worker has finished its first photo (see benchmarks/ray_scaling.py)."""
    if not finished:
        return None
    first: dict[str, float] = {}
    for w, t in finished:
        first[w] = min(first.get(w, t), t)
    warm = max(first.values())
    after = [t for _, t in finished if t > warm]
    span = max(t for _, t in finished) - warm
    return len(after) / span if after and span > 0 else None


# -- naive baseline ----------------------------------------------------------------------------
def _torchattacks():
    try:
        import torchattacks
    except ImportError:
        raise FacePrivError(f"facepriv bench needs torchattacks for the naive baseline: {BENCH_INSTALL_HINT}") from None
    return torchattacks


def naive_cloak(files: list[Path], out_dir: Path, model_path: str, attack: str = "fgsm", eps: float = 8.0,
                steps: int = 10, alpha: float = 1.0, progress: bool = False, mtcnn=None, loaded=None) -> dict[str, Any]:
    """What a user would write: one photo at a time, MTCNN -> crop -> torchattacks -> paste -> save.

    The model and MTCNN are built once (before the timed loop, unless passed in). The
    facepriv models take [0, 1] NCHW input at `model.input_size` (paper-cnn scales to 0-255
    inside), which is exactly what torchattacks expects, so the model is used as it is.
    """
    from facenet_pytorch import MTCNN
    from PIL import Image
    from tqdm import tqdm

    from facepriv.models.checkpoint import load_checkpoint

    ta = _torchattacks()
    loaded = loaded or load_checkpoint(model_path)
    # the model as a user holds it: PyTorch's default (contiguous) layout, not facepriv's channels-last
    model = copy.deepcopy(loaded.model).to(memory_format=torch.contiguous_format).eval()
    size = int(model.input_size)
    mtcnn = mtcnn or MTCNN(keep_all=True)
    if attack == "fgsm":
        atk = ta.FGSM(model, eps=eps / 255)
    else:
        atk = ta.PGD(model, eps=eps / 255, alpha=alpha / 255, steps=steps, random_start=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    faces = 0
    t0 = time.perf_counter()
    for i, f in enumerate(tqdm(files, desc=f"naive {attack}", disable=not progress, leave=False)):
        img = Image.open(f).convert("RGB")
        boxes, _ = mtcnn.detect(img)
        if boxes is not None:
            crops, places = [], []
            for b in boxes:
                x0, y0 = max(0, int(b[0])), max(0, int(b[1]))
                x1, y1 = min(img.width, int(b[2])), min(img.height, int(b[3]))
                if x1 - x0 < 2 or y1 - y0 < 2:
                    continue
                face = img.crop((x0, y0, x1, y1)).resize((size, size))
                crops.append(torch.from_numpy(np.array(face)).permute(2, 0, 1).float() / 255)
                places.append((x0, y0, x1, y1))
            if crops:
                x = torch.stack(crops)
                with torch.no_grad():
                    y = model(x).argmax(1)
                adv = atk(x, y)
                for a, (x0, y0, x1, y1) in zip(adv, places):
                    arr = (a.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
                    img.paste(Image.fromarray(arr).resize((x1 - x0, y1 - y0)), (x0, y0))
                faces += len(crops)
        img.save(out_dir / f"{i:06d}.jpg", quality=95)
    seconds = time.perf_counter() - t0
    return {"photos": len(files), "faces": faces, "seconds": seconds,
            "photos_per_s": len(files) / seconds, "faces_per_s": faces / seconds}


# -- the surrogate's own cost ---------------------------------------------------------------
def time_fwd_bwd(net: torch.nn.Module, crops: int, repeats: int = 3, views: int = 1) -> float:
    """Median seconds of one forward+backward (w.r.t. the input) of `crops` crops at the
    model's input size, logits averaged over `views` and the net called as the pipeline's
    CropModel calls it (`geometry.net_over_views`)."""
    size = int(getattr(net, "input_size", 160))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((crops, 3, size, size), generator=g)
    dev = next(net.parameters()).device
    x0 = x0.to(dev)
    times = []
    for r in range(repeats + 1):
        x = x0.clone().requires_grad_(True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        logits = net_over_views(net, list(x.split(crops // views))).mean(0)
        y = logits.detach().argmax(1)
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        torch.autograd.grad(loss, x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if r:  # the first call warms the kernels
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def attack_batches(faces_per_call: list[int], face_batch: int) -> list[int]:
    """Faces per attack call, as the pipeline chunks each process() call's faces."""
    out = []
    for n in faces_per_call:
        out += [min(face_batch, n - s) for s in range(0, n, face_batch)]
    return out


def bare_seconds(net: torch.nn.Module, batches: list[int], steps: int, views: int, repeats: int = 3) -> dict[str, Any]:
    """The model work PGD-`steps` cannot avoid for these attack batches: per batch of b faces,
    `steps` forward+backward passes of b x views crops. Timed once per distinct b."""
    per: dict[int, float] = {}
    for b in sorted(set(batches)):
        per[b] = time_fwd_bwd(net, b * views, repeats=repeats, views=views)
    total = sum(steps * per[b] for b in batches)
    faces = sum(batches)
    return {"seconds": total, "faces": faces, "per_face_s": total / faces if faces else None,
            "fwd_bwd_s_by_batch": {str(b * views): t for b, t in per.items()}}


def random_checkpoint(path: Path, arch: str, classes: list[str], seed: int = 0) -> str:
    """A randomly initialised classifier checkpoint of `arch` (for timing only: its cloaks
    are meaningless and its fooling rate says nothing)."""
    from facepriv.models.checkpoint import save_checkpoint
    from facepriv.models.registry import build_model

    torch.manual_seed(seed)
    save_checkpoint(str(path), build_model(arch, len(classes)), arch, classes)
    return str(path)


# The forced per-face measurement compares one PGD pass with its bare model work, so the
# pipeline's verify-and-retry re-attacks (extra passes over unfooled faces) are turned off there.
def no_retry(settings) -> dict[str, Any]:
    return {"verify_rounds": 0} if "verify_rounds" in {f.name for f in dataclasses.fields(settings)} else {}


# -- memory ----------------------------------------------------------------------------------------
def peak_rss_child(src: Path, dst: Path, settings, batch_size: int = 8, threads: int | None = None) -> dict[str, Any]:
    """Cloak src in a child process (in-process pipeline, no Ray); that child's peak RSS."""
    shutil.rmtree(dst, ignore_errors=True)
    from dataclasses import asdict

    payload = json.dumps({"src": str(src), "dst": str(dst), "settings": asdict(settings), "batch_size": batch_size,
                          "threads": threads})
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), payload], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise FacePrivError(f"RSS child failed ({proc.returncode}): {err.strip()[-500:]}")
    return json.loads(out.strip().splitlines()[-1])


def _rss_child_main(payload: str) -> None:
    """Entry point of the RSS child: run the cloak, print photos and its peak RSS (bytes)."""
    from facepriv.core.settings import CloakSettings
    from facepriv.distributed.runner import run_in_process

    p = json.loads(payload)
    if p.get("threads"):
        torch.set_num_threads(int(p["threads"]))
    s = p["settings"]
    s["thresholds"] = tuple(s["thresholds"])
    summary = run_in_process(p["src"], p["dst"], CloakSettings(**s), batch_size=p["batch_size"])
    print(json.dumps({"photos": summary["inputs"], "faces": summary["faces"], "seconds": summary["seconds"],
                      "peak_rss_bytes": peak_rss_self()}))


def peak_rss_self() -> int:
    """This process's peak RSS in bytes. Linux: VmHWM, which belongs to the process image
    (getrusage's ru_maxrss is kept across execve, so a child started from a big parent would
    report the parent's size); elsewhere ru_maxrss."""
    import resource

    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


# -- the preset (the product path) --------------------------------------------------------------
def preset_settings(preset: str, surrogate: str | None = None, face_batch: int = 32, device: str = "auto"):
    """The settings `facepriv cloak --preset PRESET` uses (the installed surrogates, or `surrogate`)."""
    from argparse import Namespace

    from facepriv.core.settings import CloakSettings
    from facepriv.models import store

    args = Namespace(preset=preset, surrogate=surrogate, face_batch=face_batch, device=device)
    return CloakSettings.from_args(args, installed=store.installed(), models_dir=store.models_dir())


def time_embed_fwd_bwd(net: torch.nn.Module, crops: int, repeats: int = 3) -> float:
    """Median seconds of one forward+backward (w.r.t. the input) of `crops` aligned crops at
    the embedder's input size, with embed-pgd's loss (cosine to a fixed unit vector per crop)."""
    from facepriv.attacks.embed_pgd import embedding_loss

    size = int(getattr(net, "input_size", 112))
    dev = next(net.parameters()).device
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((crops, 3, size, size), generator=g).to(dev)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(net(x0).flatten(1).float().roll(1, 0), dim=1)
    times = []
    for r in range(repeats + 1):
        x = x0.clone().requires_grad_(True)
        _sync(dev)
        t = time.perf_counter()
        loss = embedding_loss(net(x), ref).sum()
        torch.autograd.grad(loss, x)
        _sync(dev)
        if r:  # the first call warms the kernels
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def bare_embed_seconds(nets: list[torch.nn.Module], batches: list[int], steps: int, repeats: int = 3) -> dict[str, Any]:
    """The model work embed-pgd-`steps` cannot avoid for these attack batches: per batch of b
    faces and per surrogate, `steps` forward+backward passes of b crops. Timed once per distinct b."""
    per: dict[int, float] = {}
    for b in sorted(set(batches)):
        per[b] = sum(time_embed_fwd_bwd(net, b, repeats=repeats) for net in nets)
    total = sum(steps * per[b] for b in batches)
    faces = sum(batches)
    return {"seconds": total, "faces": faces, "per_face_s": total / faces if faces else None,
            "fwd_bwd_s_by_batch": {str(b): t for b, t in per.items()}}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class _Mark(torch.autograd.Function):
    """The identity; its backward calls `clock` when the gradient reaches it (a timer in the
    backward pass). Gradients pass unchanged."""

    @staticmethod
    def forward(ctx, x, clock):
        ctx.clock = clock
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        ctx.clock()
        return g, None


class StageClock:
    """Seconds spent in the embed-pgd strategy's stages during a run (`with StageClock(dev):`),
    from wrappers monkeypatched around them for the run (the bench only; what the run computes
    is unchanged):

    * align: `AlignModel.align` (the 5-point warp, input diversity included) forward, and its
      backward: from the gradient reaching the surrogate's input to it reaching the regions
      (`_Mark`s around the warp);
    * surrogate: the embedders' forward (the clean embeddings included) and backward (from the
      gradient reaching the embedding to it reaching the surrogate's input);
    * quality: `embed_pgd._quality_gradient` (SSIMULACRA 2 of each face, forward and backward),
      plus what is left of each `embed_pgd._gradient` call after align and surrogate (the loss
      and the written-file model's straight-through step);
    * write_sim: `WrittenModel._written`, the uint8 + JPEG round trip of every step;
    * budget: `EmbedPGDStrategy._fit_budget`, the quality-budget search;
    * encode: `imageio.encode` outside the budget search (the written file: in the verify step,
      which the manifest counts as t_judge, or in `_write` for photos without faces).

    With one surrogate the backward marks split its backward exactly (the engine runs it
    in sequence); with several they interleave and the split is approximate. On CUDA every
    timer synchronises the device (the breakdown then costs some throughput)."""

    def __init__(self, device: torch.device):
        self.dev = torch.device(device)
        self.s: dict[str, float] = {k: 0.0 for k in ("align_fwd", "align_bwd", "net_fwd", "net_bwd", "quality_fwd",
                                                     "gradient", "grad_fwd", "write_sim", "budget", "encode_verify",
                                                     "encode_write")}
        self._where: list[str] = []
        self._marks: list[tuple[str, float]] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def now(self) -> float:
        _sync(self.dev)
        return time.perf_counter()

    def _patch(self, owner, name: str, make) -> None:
        orig = getattr(owner, name)
        self._saved.append((owner, name, orig))
        setattr(owner, name, make(orig))

    def _mark(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return x
        return _Mark.apply(x, lambda: self._marks.append((what, self.now())))

    def _timed(self, key: str | None, where: str | None = None):
        """A wrapper adding its calls' seconds to `key` (None: not timed) and, with `where`,
        telling the wrappers inside that they run within it."""
        def make(orig):
            def wrapped(*a, **k):
                if where:
                    self._where.append(where)
                t = self.now() if key else 0.0
                try:
                    return orig(*a, **k)
                finally:
                    if key:
                        self.s[key] += self.now() - t
                    if where:
                        self._where.pop()
            return wrapped
        return make

    def __enter__(self) -> "StageClock":
        from facepriv.attacks import embed_pgd
        from facepriv.core.align import AlignModel
        from facepriv.io import imageio
        from facepriv.pipeline.cloaker import Cloaker
        from facepriv.strategies.base import WrittenModel
        from facepriv.strategies.embed import EmbedPGDStrategy

        clock = self

        def forward(self_, x):  # AlignModel.forward = net(align(x)), with marks and timers
            t0 = clock.now()
            a = self_.align(clock._mark(x, "align_in"))
            t1 = clock.now()
            e = self_.net(clock._mark(a, "net_in"))
            t2 = clock.now()
            clock.s["align_fwd"] += t1 - t0
            clock.s["net_fwd"] += t2 - t1
            if "gradient" in clock._where:
                clock.s["grad_fwd"] += t2 - t0
            return clock._mark(e, "net_out")

        def gradient(orig):
            def wrapped(*a, **k):
                self._marks.clear()
                self._where.append("gradient")
                t = self.now()
                try:
                    return orig(*a, **k)
                finally:
                    self.s["gradient"] += self.now() - t
                    self._where.pop()
                    self._split_backward()
            return wrapped

        def encode(orig):
            def wrapped(*a, **k):
                t = self.now()
                try:
                    return orig(*a, **k)
                finally:
                    if "budget" not in self._where:
                        self.s["encode_write" if "write" in self._where else "encode_verify"] += self.now() - t
            return wrapped

        self._patch(AlignModel, "forward", lambda orig: forward)
        self._patch(embed_pgd, "_gradient", gradient)
        self._patch(embed_pgd, "_quality_gradient", self._timed("quality_fwd"))
        self._patch(WrittenModel, "_written", self._timed("write_sim"))
        self._patch(EmbedPGDStrategy, "_fit_budget", self._timed("budget", where="budget"))
        self._patch(imageio, "encode", encode)
        self._patch(Cloaker, "_write", self._timed(None, where="write"))
        return self

    def _split_backward(self) -> None:
        """One gradient call's backward marks -> surrogate and align backward seconds."""
        last: dict[str, float] = {}
        for what, t in self._marks:
            if what == "net_out":
                last = {"net_out": t}
            elif what == "net_in" and "net_out" in last:
                self.s["net_bwd"] += t - last["net_out"]
                last["net_in"] = t
            elif what == "align_in" and "net_in" in last:
                self.s["align_bwd"] += t - last["net_in"]
                last = {}
        self._marks.clear()

    def __exit__(self, *exc) -> None:
        for owner, name, orig in reversed(self._saved):
            setattr(owner, name, orig)
        self._saved.clear()

    def breakdown(self, run: dict[str, Any]) -> dict[str, float]:
        """The run's wall time (`run_facepriv`'s seconds) in disjoint parts, in seconds: the
        manifest's columns (read, detect, attack, write, judge) with attack split into align,
        surrogate, quality, write_sim, budget and attack_other (step updates, clean
        embeddings, decoys, composing), and the encoding taken out of judge and write."""
        b, s = run["breakdown_s"], self.s
        out = {"read": b["t_read"], "detect": b["t_detect"]}
        out["align"] = s["align_fwd"] + s["align_bwd"]
        out["surrogate"] = s["net_fwd"] + s["net_bwd"]
        out["quality"] = s["quality_fwd"] + max(0.0, s["gradient"] - s["grad_fwd"] - s["align_bwd"] - s["net_bwd"])
        out["write_sim"] = s["write_sim"]
        out["budget"] = s["budget"]
        out["attack_other"] = b["t_attack"] - sum(out[k] for k in ("align", "surrogate", "quality", "write_sim",
                                                                      "budget"))
        out["encode"] = s["encode_verify"] + s["encode_write"]
        out["write"] = max(0.0, b["t_write"] - s["encode_write"])
        out["judge"] = max(0.0, b["t_judge"] - s["encode_verify"])
        out["other"] = b["other"]
        return out


def run_preset(o: "BenchOptions", photos: list[tuple[Path, str]], work: Path, log=print) -> dict[str, Any]:
    """The preset's cloak on the photos, in-process: throughput, per-face cost over the bare
    surrogate forward+backward x steps, the breakdown (`StageClock`) and peak RSS of N and 10N
    photos (child processes)."""
    from facepriv.models.store import load_surrogate, parse_specs
    from facepriv.pipeline.cloaker import resolve_device

    s = preset_settings(o.preset, o.surrogate, o.face_batch, o.device)
    dev = resolve_device(s.device)
    src = stage(photos, work / "preset-src")
    warm = stage(photos[:1], work / "preset-warm")
    log(f"preset {o.preset}: {s.attack} on {s.surrogate}, {s.steps} steps, eps {s.eps:g}, device {dev}; "
        "warm-up on 1 photo ...")
    run_facepriv(warm, work / "dst-preset-warm", s, o.batch_size)
    log(f"preset {o.preset}: {len(photos)} photos ...")
    with StageClock(dev) as clock:
        run = run_facepriv(src, work / "dst-preset", s, o.batch_size)
    nets = [load_surrogate(spec, dev) for spec in parse_specs(s.surrogate)]
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(False)
    batches = attack_batches(run["faces_per_call"], s.face_batch)
    log(f"preset {o.preset}: bare forward+backward of {s.surrogate} for {len(batches)} batch(es) ...")
    bare = bare_embed_seconds(nets, batches, s.steps, repeats=5)
    out: dict[str, Any] = {
        "preset": o.preset, "attack": s.attack, "surrogate": s.surrogate, "steps": s.steps, "eps": s.eps,
        "device": str(dev), "face_batch": s.face_batch,
        "input_size": {spec: int(getattr(n, "input_size", 0)) for spec, n in zip(parse_specs(s.surrogate), nets)},
        **{k: run[k] for k in ("photos", "faces", "seconds", "photos_per_s", "faces_per_s", "errors",
                               "psnr_mean", "ssim_mean", "faces_per_call", "attack_steps_per_face")},
        "pipeline_per_face_s": run["seconds"] / run["faces"] if run["faces"] else None,
        "bare_s": bare["seconds"], "bare_per_face_s": bare["per_face_s"],
        "fwd_bwd_s_by_batch": bare["fwd_bwd_s_by_batch"],
        "ratio": run["seconds"] / bare["seconds"] if bare["seconds"] else None,
        "breakdown_s": clock.breakdown(run), "manifest_breakdown_s": run["breakdown_s"],
        "stage_clock_s": dict(clock.s),
    }
    # the same model work as timed inside the run (StageClock), under the run's own conditions (a
    # loaded machine slows a few seconds of bare timing more or less than the whole run)
    surrogate = out["breakdown_s"]["surrogate"]
    out["surrogate_in_run_over_bare"] = surrogate / bare["seconds"] if bare["seconds"] else None
    out["ratio_over_in_run_surrogate"] = run["seconds"] / surrogate if surrogate else None
    if o.report_judges:
        out["report"] = report_vs_cloak(o, s, src, work, run, log)
    if o.preset_rss_n:
        n = min(o.preset_rss_n, len(photos))
        log(f"preset {o.preset}: peak RSS, {n} and {10 * n} photos (child processes) ...")
        r1 = peak_rss_child(stage(photos[:n], work / "preset-rss-n"), work / "dst-preset-rss-n", s, o.batch_size,
                            o.threads)
        r10 = peak_rss_child(stage(photos[:n], work / "preset-rss-10n", copies=10), work / "dst-preset-rss-10n", s,
                             o.batch_size, o.threads)
        out["rss"] = {"n": r1, "10n": r10}
        out["rss_ratio_10n_over_n"] = r10["peak_rss_bytes"] / r1["peak_rss_bytes"]
    return out


def time_report(dst: Path, src: Path, judges: list[str], gallery: str | None, out: Path, workers: int,
                remote=None, enrolled: bool = False) -> dict[str, Any]:
    """`facepriv report` (build_report) of one cloaked DST with the preset's judges, nothing
    cached: seconds (judge loading and gallery enrolment included) and the faces it measured.
    `enrolled`: the gallery enrolled before, by a first report into the same `out` (the report
    cache then holds the galleries and no measure: the cost of judging an archive against a
    gallery already enrolled)."""
    from facepriv.report import aggregate as agg
    from facepriv.report.build import ReportSettings, build_report
    from facepriv.report.cache import CACHE

    shutil.rmtree(out, ignore_errors=True)
    s = ReportSettings(judges=judges, gallery=gallery, src=str(src), out=str(out), sample=0, progress=False,
                       workers=workers, cache=enrolled, verify_against=None if gallery else "original")
    if enrolled:
        build_report([str(dst)], s, log=lambda m: None, remote=remote)
        for d in (out / CACHE).iterdir():
            if d.name != "galleries":
                shutil.rmtree(d)
    t0 = time.perf_counter()
    rep = build_report([str(dst)], s, log=lambda m: None, remote=remote)
    seconds = time.perf_counter() - t0
    measured = sum(c["measured"] for c in rep["measured"].values())
    run = rep["runs"][0]
    return {"seconds": seconds, "faces_measured": measured, "per_face_s": seconds / measured if measured else None,
            "workers": workers, "judges": judges, "gallery": gallery,
            "judge_names": list(rep["judges"]),
            "protection": {n: run["judges"].get(n, {}).get("protection_rate") for n in rep["judges"]},
            "verification": {n: agg.verification_rate(run["judges"].get(n)) for n in rep["judges"]},
            "notes": (rep["details"][0]["notes"] + rep["notes"])[:5]}


def report_vs_cloak(o: "BenchOptions", s, src: Path, work: Path, cloak: dict[str, Any], log=print) -> dict[str, Any]:
    """The report's per-face cost over the cloak's on the same photos, side by side in this run:
    in this process (the preset's in-process cloak above vs `build_report` with workers 0), and
    with --ray on Ray (the same cloak through `run_cloak` vs the report's Ray workers)."""
    judges = [j for j in o.report_judges if _judge_available(j)]
    skipped = [j for j in o.report_judges if j not in judges]
    if not judges:
        return {"skipped": f"no report judge installed of {', '.join(o.report_judges)}"}
    log(f"report: judges {', '.join(judges)} on the preset's written files (in this process) ...")
    here = time_report(work / "dst-preset", src, judges, o.report_gallery, work / "report-here", 0)
    res: dict[str, Any] = {"judges": judges, "not_installed": skipped, "in_process": {
        "cloak_per_face_s": cloak["seconds"] / cloak["faces"] if cloak["faces"] else None, "report": here}}
    c = res["in_process"]["cloak_per_face_s"]
    res["in_process"]["report_over_cloak_per_face"] = here["per_face_s"] / c if c and here["per_face_s"] else None
    if o.report_gallery:
        warm = time_report(work / "dst-preset", src, judges, o.report_gallery, work / "report-here-enrolled", 0,
                           enrolled=True)
        res["in_process"]["report_gallery_enrolled"] = warm
        res["in_process"]["report_gallery_enrolled_over_cloak_per_face"] = \
            warm["per_face_s"] / c if c and warm["per_face_s"] else None
    if o.ray:
        from facepriv.distributed import judging

        log("report: the preset's cloak and the report on Ray, the same photos ...")
        ray_cloak = run_facepriv_ray(src, work / "dst-preset-ray", s, o.batch_size)
        workers = int(ray_cloak["workers"])
        ray_rep = time_report(work / "dst-preset-ray", src, judges, o.report_gallery, work / "report-ray", workers,
                              remote=judging)
        rc = ray_cloak["seconds"] / ray_cloak["faces"] if ray_cloak["faces"] else None
        res["ray"] = {"cloak": ray_cloak, "cloak_per_face_s": rc, "report": ray_rep,
                      "report_over_cloak_per_face": ray_rep["per_face_s"] / rc if rc and ray_rep["per_face_s"] else None}
        if o.report_gallery:
            warm = time_report(work / "dst-preset-ray", src, judges, o.report_gallery, work / "report-ray-enrolled",
                               workers, remote=judging, enrolled=True)
            res["ray"]["report_gallery_enrolled"] = warm
            res["ray"]["report_gallery_enrolled_over_cloak_per_face"] = \
                warm["per_face_s"] / rc if rc and warm["per_face_s"] else None
    return res


def _judge_available(spec: str) -> bool:
    from facepriv.judges import get_judge

    try:
        get_judge(spec)
    except Exception:  # noqa: BLE001 - not installed here: left out of the comparison, and said so
        return False
    return True


# -- the whole bench ---------------------------------------------------------------------------------
@dataclass
class BenchOptions:
    photo_dirs: list[str]
    model: str | None = None  # classifier checkpoint: the FGSM/PGD parts (None: skipped)
    out: str | None = None
    limit: int | None = None  # photos per dir
    warmup: int = 4
    batch_size: int = 8
    face_batch: int = 32
    views: int = 5
    fgsm_eps: float = 8.0
    pgd_eps: float = 4.0
    steps: int = 10
    irv1_model: str | None = None  # inception-resnet-v1 classifier checkpoint (default: random init)
    irv1_photos: int = 4  # photos for the inception-resnet-v1 PGD run (its CPU cost is ~100x paper-cnn)
    rss_n: int = 20
    ray: bool = True
    threads: int | None = None
    progress: bool = True
    work_dir: str | None = None
    keep: bool = False
    preset: str | None = None  # a cloak preset (facepriv.core.settings.PRESETS) to measure: `run_preset`
    surrogate: str | None = None  # the preset's surrogates (default: the installed ones, as cloak picks them)
    preset_rss_n: int = 3  # N for the preset's peak-RSS runs of N and 10N photos (0: skipped)
    device: str = "auto"
    report_judges: list[str] = field(default_factory=lambda: ["dlib", "sface"])  # [] skips the report timing
    report_gallery: str | None = None  # clean DIR/<identity>/<photos> (None: verification against the original)


def run_bench(o: BenchOptions, log=print) -> dict[str, Any]:
    if not o.model and not o.preset:
        raise FacePrivError("facepriv bench: nothing to measure: give --model (a classifier checkpoint, for the "
                            "FGSM/PGD parts) and/or --preset (needs installed surrogates, or --surrogate)")
    if o.model:
        _torchattacks()  # fail early, before minutes of work, when the baseline cannot run
    if o.threads:
        torch.set_num_threads(o.threads)
    work = Path(o.work_dir or tempfile.mkdtemp(prefix="facepriv-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        photos = list_photos(o.photo_dirs, o.limit)
        res: dict[str, Any] = {"machine": machine(), "photos": len(photos), "photo_dirs": o.photo_dirs}
        if o.model:
            res.update(classifier_bench(o, photos, work, log))
        if o.preset:
            res["preset"] = run_preset(o, photos, work, log)
            res["preset_per_face_cost_ratio"] = res["preset"]["ratio"]
            rep = res["preset"].get("report") or {}
            for where in ("in_process", "ray"):
                if rep.get(where):
                    res[f"report_over_cloak_per_face_{where}"] = rep[where]["report_over_cloak_per_face"]
                    if "report_gallery_enrolled_over_cloak_per_face" in rep[where]:
                        res[f"report_over_cloak_per_face_{where}_gallery_enrolled"] = \
                            rep[where]["report_gallery_enrolled_over_cloak_per_face"]
    finally:
        if not o.keep:
            shutil.rmtree(work, ignore_errors=True)
    if o.out:
        Path(o.out).write_text(json.dumps(res, indent=2, default=str))
    return res


def classifier_bench(o: BenchOptions, photos: list[tuple[Path, str]], work: Path, log=print) -> dict[str, Any]:
    """The classifier parts (--model): FGSM and PGD against the naive loop, the per-face cost
    of PGD on the model's arch and inception-resnet-v1, Ray, and peak RSS of the FGSM cloak."""
    from facepriv.models.checkpoint import load_checkpoint
    from facepriv.core.settings import CloakSettings

    src = stage(photos, work / "src")
    warm = stage(photos[: o.warmup], work / "warm")
    files = [src / k for _, k in photos]
    loaded = load_checkpoint(o.model)
    arch = loaded.meta.get("arch", "?")
    base = CloakSettings(model=o.model, face_batch=o.face_batch, views=o.views, device=o.device)
    fgsm_s = replace(base, attack="fgsm", eps=o.fgsm_eps)
    pgd_s = replace(base, attack="pgd", eps=o.pgd_eps, steps=o.steps)
    res: dict[str, Any] = {
        "model": o.model, "arch": arch,
        "settings": {"batch_size": o.batch_size, "face_batch": o.face_batch, "views": o.views,
                     "fgsm_eps": o.fgsm_eps, "pgd_eps": o.pgd_eps, "steps": o.steps,
                     "torch_threads": torch.get_num_threads()},
    }

    log(f"bench: {len(photos)} photos, model {o.model} ({arch}), {torch.get_num_threads()} torch thread(s); "
        f"warm-up on {len(photos[: o.warmup])} photos")
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True)
    run_facepriv(warm, work / "dst-warm", fgsm_s, o.batch_size)
    naive_cloak(files[: o.warmup], work / "naive-warm", o.model, "fgsm", o.fgsm_eps, mtcnn=mtcnn, loaded=loaded)

    log("facepriv cloak fgsm ...")
    res["facepriv_fgsm"] = run_facepriv(src, work / "dst-fgsm", fgsm_s, o.batch_size)
    # the same work the naive loop does: one detection, a plain-crop FGSM, save; no crop-jitter
    # views, no write simulation, no re-detection/judging of the written file
    log("facepriv cloak fgsm, same work as naive ...")
    same = replace(fgsm_s, views=1, simulate_write=False, judge=False)
    res["facepriv_fgsm_same_work"] = run_facepriv(src, work / "dst-fgsm-same", same, o.batch_size)
    log("naive fgsm ...")
    res["naive_fgsm"] = naive_cloak(files, work / "naive-fgsm", o.model, "fgsm", o.fgsm_eps,
                                    progress=o.progress, mtcnn=mtcnn, loaded=loaded)
    log(f"facepriv cloak pgd-{o.steps} ...")
    res["facepriv_pgd"] = run_facepriv(src, work / "dst-pgd", pgd_s, o.batch_size)
    log(f"naive pgd-{o.steps} ...")
    res["naive_pgd"] = naive_cloak(files, work / "naive-pgd", o.model, "pgd", o.pgd_eps, o.steps,
                                   alpha=max(o.pgd_eps / 4, 1.0), progress=o.progress, mtcnn=mtcnn, loaded=loaded)
    res["speedup_vs_naive_fgsm"] = res["facepriv_fgsm"]["photos_per_s"] / res["naive_fgsm"]["photos_per_s"]
    res["speedup_vs_naive_pgd"] = res["facepriv_pgd"]["photos_per_s"] / res["naive_pgd"]["photos_per_s"]
    res["speedup_vs_naive_fgsm_same_work"] = (res["facepriv_fgsm_same_work"]["photos_per_s"]
                                              / res["naive_fgsm"]["photos_per_s"])

    # per-face cost of PGD-steps with every step forced (kappa = inf: early stop never fires)
    irv1 = o.irv1_model or random_checkpoint(work / "irv1-random.pt", "inception-resnet-v1", loaded.classes)
    res["irv1_checkpoint"] = o.irv1_model or "random init (timing only)"
    res["per_face"] = {}
    for name, ckpt, subset in (("paper-cnn" if arch == "paper-cnn" else arch, o.model, None),
                               ("inception-resnet-v1", irv1, o.irv1_photos)):
        psrc = src if subset is None else stage(photos[:subset], work / f"src-{name}")
        net = load_checkpoint(ckpt).model
        for views in sorted({o.views, 1}, reverse=True):
            log(f"per-face cost: {name}, pgd-{o.steps} forced, views {views} ...")
            s = replace(pgd_s, model=ckpt, kappa=float("inf"), views=views, **no_retry(pgd_s))
            run = run_facepriv(psrc, work / f"dst-cost-{name}-{views}", s, o.batch_size)
            bare = bare_seconds(net, attack_batches(run["faces_per_call"], o.face_batch), o.steps, views)
            res["per_face"].setdefault(name, {})[f"views{views}"] = {
                "photos": run["photos"], "faces": run["faces"], "pipeline_s": run["seconds"],
                "pipeline_per_face_s": run["seconds"] / run["faces"] if run["faces"] else None,
                "bare_s": bare["seconds"], "bare_per_face_s": bare["per_face_s"],
                "ratio": run["seconds"] / bare["seconds"] if bare["seconds"] else None,
                "attack_steps_per_face": run["attack_steps_per_face"],
                "breakdown_s": run["breakdown_s"], "fwd_bwd_s_by_batch": bare["fwd_bwd_s_by_batch"],
            }
    key = f"views{o.views}"
    res["per_face_cost_ratio_pgd10"] = {a: v[key]["ratio"] for a, v in res["per_face"].items()}
    res["per_face_cost_ratio_pgd10_views1"] = {a: v["views1"]["ratio"] for a, v in res["per_face"].items()}
    res["per_face_cost_ratio_note"] = (f"pipeline wall / bare forward+backward, PGD-{o.steps} with every step forced; "
                                       f"per_face_cost_ratio_pgd10 uses the default views={o.views}")

    if o.ray:
        log("facepriv cloak fgsm on Ray ...")
        res["facepriv_fgsm_ray"] = run_facepriv_ray(src, work / "dst-ray", fgsm_s, o.batch_size)
        res["ray_overhead_s"] = res["facepriv_fgsm_ray"]["seconds"] - res["facepriv_fgsm"]["seconds"]

    n = min(o.rss_n, len(photos))
    log(f"peak RSS: {n} and {10 * n} photos (fgsm, child processes) ...")
    rss_photos = photos[:n]
    r1 = peak_rss_child(stage(rss_photos, work / "rss-n"), work / "dst-rss-n", fgsm_s, o.batch_size, o.threads)
    r10 = peak_rss_child(stage(rss_photos, work / "rss-10n", copies=10), work / "dst-rss-10n", fgsm_s,
                         o.batch_size, o.threads)
    res["rss"] = {"n": r1, "10n": r10}
    res["rss_ratio_10n_over_n"] = r10["peak_rss_bytes"] / r1["peak_rss_bytes"]
    return res


def machine() -> dict[str, Any]:
    import platform

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def _f(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def format_table(r: dict[str, Any]) -> str:
    """The printed table (also in docs/performance.md)."""
    lines: list[str] = []

    def row(name, d):
        lines.append(f"{name:<34} {d['photos']:>6} {d['faces']:>6} {d['seconds']:>8.2f} {_f(d['photos_per_s']):>9} "
                     f"{_f(d['faces_per_s']):>8}  {_f(d.get('fooling_rate'), '{:.3f}'):>7}  {_f(d.get('psnr_mean'), '{:.1f}')}")

    if "facepriv_fgsm" in r:  # the classifier parts (--model)
        lines.append(f"{'run':<34} {'photos':>6} {'faces':>6} {'sec':>8} {'photos/s':>9} {'faces/s':>8}  fooling  PSNR")
        row("facepriv cloak fgsm (in-process)", r["facepriv_fgsm"])
        if "facepriv_fgsm_ray" in r:
            d = r["facepriv_fgsm_ray"]
            row(f"facepriv cloak fgsm (Ray, {d['workers']} wkr)", d)
        if "facepriv_fgsm_same_work" in r:
            row("facepriv fgsm, naive's work (no judge)", r["facepriv_fgsm_same_work"])
        row("naive fgsm (torchattacks)", r["naive_fgsm"])
        row(f"facepriv cloak pgd-{r['settings']['steps']}", r["facepriv_pgd"])
        row(f"naive pgd-{r['settings']['steps']} (torchattacks)", r["naive_pgd"])
        lines.append("")
        lines.append(f"speedup_vs_naive_fgsm  {r['speedup_vs_naive_fgsm']:.2f}x   (pgd: {r['speedup_vs_naive_pgd']:.2f}x)")
        if "speedup_vs_naive_fgsm_same_work" in r:
            lines.append(f"speedup_vs_naive_fgsm_same_work  {r['speedup_vs_naive_fgsm_same_work']:.2f}x   (views 1, no write "
                         "simulation, no re-detection/judging: the work the naive loop does)")
        if "facepriv_fgsm_ray" in r:
            d = r["facepriv_fgsm_ray"]
            lines.append(f"Ray: end to end {_f(d['photos_per_s'])} photos/s (actor start + model load included), steady "
                         f"{_f(d['steady_photos_per_s'])} photos/s; overhead vs in-process {r['ray_overhead_s']:+.1f} s")
        lines.append("")
        lines.append(f"per-face cost, pgd-{r['settings']['steps']} forced (kappa=inf): pipeline wall / bare fwd+bwd")
        lines.append(f"{'arch':<22} {'views':>5} {'faces':>5} {'pipe s/face':>11} {'bare s/face':>11} {'ratio':>7}   "
                     "read  detect  attack  write  judge  other  (s)")
        for a, per in r["per_face"].items():
            for vk, d in per.items():
                b = d["breakdown_s"]
                lines.append(f"{a:<22} {vk[5:]:>5} {d['faces']:>5} {_f(d['pipeline_per_face_s'], '{:.4f}'):>11} "
                             f"{_f(d['bare_per_face_s'], '{:.4f}'):>11} {_f(d['ratio']):>7}   "
                             + "  ".join(f"{b[k]:.2f}" for k in (*TIMING_COLUMNS, "other")))
        b = r["facepriv_fgsm"]["breakdown_s"]
        lines.append("fgsm breakdown (s): " + ", ".join(f"{k.replace('t_', '')} {v:.2f}" for k, v in b.items()))
        rs = r["rss"]
        lines.append("")
        lines.append(f"peak RSS: {rs['n']['photos']} photos {rs['n']['peak_rss_bytes'] / 2**20:.0f} MiB, "
                     f"{rs['10n']['photos']} photos {rs['10n']['peak_rss_bytes'] / 2**20:.0f} MiB; "
                     f"rss_ratio_10n_over_n {r['rss_ratio_10n_over_n']:.3f}")
    if "preset" in r:
        if "facepriv_fgsm" in r:
            lines.append("")
        lines += format_preset(r["preset"])
    return "\n".join(lines)


def format_preset(d: dict[str, Any]) -> list[str]:
    """The preset's lines of the table."""
    b = d["breakdown_s"]
    total = sum(b.values())
    out = [f"preset {d['preset']} ({d['attack']} on {d['surrogate']}, {d['steps']} steps, eps {d['eps']:g}, "
           f"{d['device']}): {d['photos']} photos, {d['faces']} faces, {d['seconds']:.2f} s: "
           f"{_f(d['photos_per_s'], '{:.3f}')} photos/s, {_f(d['faces_per_s'], '{:.3f}')} faces/s, "
           f"PSNR {_f(d.get('psnr_mean'), '{:.1f}')}",
           f"per-face cost: pipeline {_f(d['pipeline_per_face_s'], '{:.3f}')} s/face, bare {d['surrogate']} "
           f"forward+backward x {d['steps']} {_f(d['bare_per_face_s'], '{:.3f}')} s/face "
           f"(batches {', '.join(d['fwd_bwd_s_by_batch'])}): ratio {_f(d['ratio'])}",
           "breakdown (s, % of wall): " + ", ".join(f"{k} {v:.2f} ({100 * v / total:.0f}%)" if total else f"{k} {v:.2f}"
                                                   for k, v in b.items()),
           f"the surrogate's forward+backward inside the run / bare: {_f(d['surrogate_in_run_over_bare'])}; "
           f"wall / that in-run surrogate work: {_f(d['ratio_over_in_run_surrogate'])}"]
    rep = d.get("report") or {}
    if rep.get("skipped"):
        out.append(f"report: {rep['skipped']}")
    for where in ("in_process", "ray"):
        if rep.get(where):
            x = rep[where]
            r = x["report"]
            out.append(f"report ({where.replace('_', ' ')}, {r['workers']} worker(s), judges {', '.join(r['judges'])}, "
                       f"{'gallery ' + r['gallery'] if r['gallery'] else 'verification against the original'}): "
                       f"{r['seconds']:.1f} s for {r['faces_measured']} faces, {_f(r['per_face_s'], '{:.3f}')} s/face; "
                       f"cloak {_f(x['cloak_per_face_s'], '{:.3f}')} s/face; report / cloak per face "
                       f"{_f(x['report_over_cloak_per_face'])}")
            w = x.get("report_gallery_enrolled")
            if w:
                out.append(f"  the same with the gallery enrolled before (the report cache holding only it): "
                           f"{w['seconds']:.1f} s, {_f(w['per_face_s'], '{:.3f}')} s/face; report / cloak per face "
                           f"{_f(x['report_gallery_enrolled_over_cloak_per_face'])}")
    if "rss" in d:
        rs = d["rss"]
        out.append(f"preset peak RSS: {rs['n']['photos']} photos {rs['n']['peak_rss_bytes'] / 2**20:.0f} MiB, "
                   f"{rs['10n']['photos']} photos {rs['10n']['peak_rss_bytes'] / 2**20:.0f} MiB; "
                   f"rss_ratio_10n_over_n {d['rss_ratio_10n_over_n']:.3f}")
    return out


if __name__ == "__main__":
    _rss_child_main(sys.argv[1])
