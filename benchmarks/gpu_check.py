"""The product path on one device, as one JSON: what `benchmarks/gpu_check.sh` runs on a machine
with a CUDA GPU (and, to check the script itself, on the CPU: `--device cpu --n 4`).

    python benchmarks/gpu_check.py [--device cuda] [--n 16] [--out gpu_check.json] [--photos DIR]

A benchmark, never a test. Sections, in this order, each written to --out as soon as it ends
(a section that fails records its error and the others still run; one that would start after
--budget-s seconds is recorded as skipped, so the whole check ends in time):

* ``protect``: `facepriv cloak --preset protect` on N photos through the bench harness
  (`bench.run_preset`): photos/s, faces/s, the per-face cost over the surrogate's bare
  forward+backward x the preset's steps (same batches, same run) and the breakdown;
* ``pgd``: PGD-10 (eps 4, views 5) with a randomly initialised paper-cnn classifier (timing only:
  its cloaks mean nothing): photos/s and faces/s, and the per-face cost with every step forced
  over the bare forward+backward;
* ``mtcnn``: the pipeline's detector (`FaceDetector`, batches of 8 as the pipeline sends them) on
  the device: photos/s, faces/s; off the CPU also on the CPU, with the largest box difference;
* ``bf16``: the preset's cloak with each surrogate's forward under ``torch.autocast(bfloat16)``
  against float32 (both without the breakdown's timers): photos/s, and the protection of each as
  written - per face, the change of its embedding between the original and the written photo
  (on the original's landmarks) on every installed surrogate (cosine distance) and on dlib when
  its models are installed (euclidean) - with the bf16 - fp32 difference. bf16 the device does
  not support is recorded as such. facepriv has no bf16 option: the check wraps the strategy's
  surrogates for its run (`bf16_surrogates`), to tell whether one would pay.

Photos: --photos, else ../shared/data/lfw50 beside the checkout or /work/shared/data/lfw50,
else the checkout's examples/sample/test (so a plain clone runs it). Surrogates: the installed
ones ($FACEPRIV_HOME, `facepriv models install`) or --surrogate; without any, the sections that
need them are skipped with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PHOTO_CANDIDATES = (ROOT.parent / "shared" / "data" / "lfw50", Path("/work/shared/data/lfw50"),
                    ROOT / "examples" / "sample" / "test")


def harness():
    sys.path.insert(0, str(ROOT))
    from facepriv.cli.bench import harness as load

    return load()


def default_photos() -> Path:
    return next(p for p in PHOTO_CANDIDATES if p.is_dir())


# -- bf16 ------------------------------------------------------------------------------------------
class Autocast(torch.nn.Module):
    """A surrogate whose forward runs under torch.autocast(bfloat16); float32 out."""

    def __init__(self, net: torch.nn.Module, device_type: str):
        super().__init__()
        self.net, self.device_type = net, device_type
        for k in ("input_size", "crop", "kind"):
            if hasattr(net, k):
                setattr(self, k, getattr(net, k))

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            y = self.net(x)
        return y.float()


@contextlib.contextmanager
def bf16_surrogates(device_type: str):
    """While open, every EmbedPGDStrategy built wraps its surrogates in `Autocast` (after its
    decoy banks are looked up by their weights)."""
    from facepriv.strategies.embed import EmbedPGDStrategy

    orig = EmbedPGDStrategy.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        self.nets = [Autocast(n, device_type) for n in self.nets]

    EmbedPGDStrategy.__init__ = init
    try:
        yield
    finally:
        EmbedPGDStrategy.__init__ = orig


def bf16_supported(dev: torch.device) -> tuple[bool, str]:
    if dev.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"torch.cuda.is_bf16_supported() = {ok} on {torch.cuda.get_device_name(dev)}"
    try:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            y = torch.nn.functional.conv2d(torch.rand(1, 3, 8, 8, device=dev), torch.rand(4, 3, 3, 3, device=dev))
        return y.dtype == torch.bfloat16, f"autocast({dev.type}) conv2d gives {y.dtype}"
    except Exception as e:  # noqa: BLE001 - recorded, not raised
        return False, f"autocast({dev.type}, bfloat16) failed: {type(e).__name__}: {e}"


# -- protection of written files -------------------------------------------------------------------
def written_faces(src: Path, dst: Path) -> list[tuple[np.ndarray, np.ndarray, list[dict]]]:
    """(original rgb, written rgb, faces) per photo with faces of the one run in dst; faces are
    {"box", "landmarks" (5,2)} in photo pixels, from the run's manifest."""
    import pyarrow.parquet as pq

    from facepriv.io import imageio, manifest

    out = []
    for part in sorted(dst.glob("_facepriv/runs/*/manifest/*.parquet")):
        for r in pq.read_table(part, schema=manifest.SCHEMA).to_pylist():
            if r["status"] != "ok" or not r["faces"]:
                continue
            faces = [{"box": np.asarray(f["box"], np.float32),
                      "landmarks": np.asarray(f["landmarks"], np.float32).reshape(5, 2)} for f in r["faces"]]
            orig = imageio.decode((src / r["source_key"]).read_bytes()).rgb
            written = imageio.decode((dst / r["output_key"]).read_bytes()).rgb
            out.append((orig, written, faces))
    return out


def judges_for(device: torch.device) -> tuple[dict[str, Any], dict[str, str]]:
    """Every installed surrogate as an embedder judge, and dlib when its models are installed."""
    from facepriv.judges import get_judge
    from facepriv.models import store

    judges, missing = {}, {}
    for name in store.installed():
        judges[name] = get_judge(f"embedder:{name}", device=device)
    try:
        judges["dlib"] = get_judge("dlib")
    except Exception as e:  # noqa: BLE001 - dlib is optional
        missing["dlib"] = f"{type(e).__name__}: {e}"
    return judges, missing


def protection(photos, judges: dict[str, Any]) -> dict[str, Any]:
    """Per judge: the mean change of each face's embedding (cosine distance, or euclidean for
    dlib) between the original and the written photo, and the share of faces moved past the
    judge's threshold (no longer verified as themselves)."""
    out = {}
    for name, j in judges.items():
        dists = []
        for orig, written, faces in photos:
            a, b = j.embed(orig, faces), j.embed(written, faces)
            if j.metric == "cosine":
                a = a / np.linalg.norm(a, axis=1, keepdims=True)
                b = b / np.linalg.norm(b, axis=1, keepdims=True)
                dists += list(1.0 - (a * b).sum(1))
            else:
                dists += list(np.linalg.norm(a - b, axis=1))
        d = np.asarray(dists, np.float64)
        out[name] = {"metric": j.metric, "faces": len(d), "mean_distance": float(d.mean()) if len(d) else None,
                     "past_threshold": float((d > j.threshold).mean()) if len(d) else None,
                     "threshold": j.threshold}
    return out


# -- sections --------------------------------------------------------------------------------------
def check_protect(bench, a, photos, work, dev) -> dict[str, Any]:
    o = bench.BenchOptions(photo_dirs=[], preset="protect", surrogate=a.surrogate, preset_rss_n=0,
                           device=str(dev), batch_size=a.batch_size)
    d = bench.run_preset(o, photos, work, log=_log)
    print("\n".join(bench.format_preset(d)), flush=True)
    return d


def check_pgd(bench, a, photos, work, dev) -> dict[str, Any]:
    from facepriv.core.settings import CloakSettings
    from facepriv.models.checkpoint import load_checkpoint

    classes = sorted({k.split("/")[1] for _, k in photos if k.count("/") >= 2}) or ["a", "b"]
    ckpt = bench.random_checkpoint(work / "paper-cnn-random.pt", "paper-cnn", classes)
    s = CloakSettings(model=ckpt, attack="pgd", eps=4.0, steps=10, views=5, device=str(dev))
    src = bench.stage(photos, work / "pgd-src")
    bench.run_facepriv(bench.stage(photos[:2], work / "pgd-warm"), work / "dst-pgd-warm", s, a.batch_size)
    run = bench.run_facepriv(src, work / "dst-pgd", s, a.batch_size)
    forced = replace(s, kappa=float("inf"), **bench.no_retry(s))
    cost = bench.run_facepriv(src, work / "dst-pgd-forced", forced, a.batch_size)
    bare = bench.bare_seconds(load_checkpoint(ckpt, dev).model, bench.attack_batches(cost["faces_per_call"], 32),
                              s.steps, s.views)
    d = {"checkpoint": "paper-cnn, random init (timing only)", "eps": s.eps, "steps": s.steps, "views": s.views,
         **{k: run[k] for k in ("photos", "faces", "seconds", "photos_per_s", "faces_per_s", "breakdown_s")},
         "forced": {"seconds": cost["seconds"], "faces": cost["faces"], "bare_s": bare["seconds"],
                    "ratio": cost["seconds"] / bare["seconds"] if bare["seconds"] else None,
                    "breakdown_s": cost["breakdown_s"]}}
    print(f"pgd-10 (paper-cnn, random): {d['photos']} photos, {d['faces']} faces, {d['seconds']:.2f} s: "
          f"{d['photos_per_s']:.3f} photos/s, {d['faces_per_s']:.3f} faces/s; forced per-face cost ratio "
          f"{bench._f(d['forced']['ratio'])}", flush=True)
    return d


def check_mtcnn(bench, a, photos, work, dev) -> dict[str, Any]:
    from facepriv.io import imageio
    from facepriv.pipeline.faces import FaceDetector

    rgbs = [imageio.decode(f.read_bytes()).rgb for f, _ in photos]

    def timed(device) -> tuple[dict[str, Any], list]:
        det = FaceDetector(device=device)
        det.detect(rgbs[: a.batch_size])  # warm-up
        bench._sync(torch.device(device))
        t = time.perf_counter()
        found = []
        for i in range(0, len(rgbs), a.batch_size):
            found += det.detect(rgbs[i : i + a.batch_size])
        bench._sync(torch.device(device))
        sec = time.perf_counter() - t
        faces = sum(len(d) for d in found)
        return {"device": str(device), "photos": len(rgbs), "faces": faces, "seconds": sec,
                "photos_per_s": len(rgbs) / sec, "faces_per_s": faces / sec}, found

    d, found = timed(dev)
    if dev.type != "cpu":
        cpu, ref = timed("cpu")
        same = [len(x) == len(y) for x, y in zip(found, ref)]
        diffs = [float(np.abs(x.boxes - y.boxes).max()) for x, y, s in zip(found, ref, same) if s and len(x)]
        d["cpu"] = cpu
        d["speedup_over_cpu"] = d["photos_per_s"] / cpu["photos_per_s"]
        d["same_face_count_as_cpu"] = float(np.mean(same))
        d["max_box_diff_px"] = max(diffs) if diffs else None
    print(f"mtcnn on {dev}: {d['photos']} photos, {d['faces']} faces, {d['seconds']:.2f} s: "
          f"{d['photos_per_s']:.2f} photos/s, {d['faces_per_s']:.2f} faces/s"
          + (f" ({d['speedup_over_cpu']:.1f}x the CPU; max box diff {bench._f(d['max_box_diff_px'], '{:.3f}')} px)"
             if "cpu" in d else ""), flush=True)
    return d


def check_bf16(bench, a, photos, work, dev) -> dict[str, Any]:
    ok, why = bf16_supported(dev)
    d: dict[str, Any] = {"supported": ok, "how": why}
    if not ok:
        print(f"bf16: not supported on {dev}: {why}", flush=True)
        return d
    s = bench.preset_settings("protect", a.surrogate, device=str(dev))
    src = bench.stage(photos, work / "bf16-src")
    warm = bench.stage(photos[:1], work / "bf16-warm")
    judges, missing = judges_for(dev)
    d["judges_missing"] = missing
    for mode in ("fp32", "bf16"):
        ctx = bf16_surrogates(dev.type) if mode == "bf16" else contextlib.nullcontext()
        with ctx:
            bench.run_facepriv(warm, work / f"dst-{mode}-warm", s, a.batch_size)
            run = bench.run_facepriv(src, work / f"dst-{mode}", s, a.batch_size)
        d[mode] = {**{k: run[k] for k in ("photos", "faces", "seconds", "photos_per_s", "faces_per_s", "psnr_mean",
                                          "errors")},
                   "protection": protection(written_faces(src, work / f"dst-{mode}"), judges)}
    d["speedup"] = d["bf16"]["photos_per_s"] / d["fp32"]["photos_per_s"]
    d["protection_delta_bf16_minus_fp32"] = {
        j: {k: (d["bf16"]["protection"][j][k] - d["fp32"]["protection"][j][k])
            if d["fp32"]["protection"][j][k] is not None else None for k in ("mean_distance", "past_threshold")}
        for j in judges}
    print(f"bf16 on {dev}: {d['bf16']['photos_per_s']:.3f} vs fp32 {d['fp32']['photos_per_s']:.3f} photos/s "
          f"({d['speedup']:.2f}x); protection (mean embedding distance, share past threshold) bf16 - fp32: "
          + ", ".join(f"{j} {v['mean_distance']:+.4f} / {v['past_threshold']:+.3f}"
                      for j, v in d["protection_delta_bf16_minus_fp32"].items()), flush=True)
    return d


SECTIONS = {"protect": check_protect, "pgd": check_pgd, "mtcnn": check_mtcnn, "bf16": check_bf16}
NEEDS_SURROGATE = ("protect", "bf16")


def _log(m: str) -> None:
    print(m, file=sys.stderr, flush=True)


def _write(path: str, res: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(res, indent=2, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--n", type=int, default=16, help="photos (default 16)")
    p.add_argument("--out", default="gpu_check.json", help="JSON to write (default gpu_check.json)")
    p.add_argument("--photos", default=None, help="photo folder (default: lfw50 when present, else examples/sample/test)")
    p.add_argument("--surrogate", default=None, help="the preset's surrogates (default: the installed ones)")
    p.add_argument("--batch-size", type=int, default=8, help="photos per pipeline call (default 8)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no section after this many seconds (default 420: the whole check in ~8 minutes)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run with --device cpu",
              file=sys.stderr)
        return 2
    bench = harness()
    from facepriv.models import store

    photo_dir = Path(a.photos) if a.photos else default_photos()
    photos = bench.list_photos([str(photo_dir)], a.n)
    res: dict[str, Any] = {"machine": bench.machine(), "device": str(dev), "photos": len(photos),
                           "photo_dir": str(photo_dir), "surrogates_installed": store.installed(),
                           "budget_s": a.budget_s, "torch_threads": torch.get_num_threads(), "sections": {}}
    if dev.type == "cuda":
        res["machine"]["cuda_device"] = torch.cuda.get_device_name(dev)
    have_surrogate = bool(a.surrogate or store.installed())
    work = Path(tempfile.mkdtemp(prefix="facepriv-gpu-check-"))
    print(f"gpu_check: {len(photos)} photos from {photo_dir} on {dev}; surrogates: "
          f"{a.surrogate or ', '.join(store.installed()) or 'none'}", flush=True)
    _write(a.out, res)
    name = None
    try:
        for name in [s.strip() for s in a.sections.split(",") if s.strip()]:
            elapsed = time.perf_counter() - t0
            if name in NEEDS_SURROGATE and not have_surrogate:
                res["sections"][name] = {"skipped": f"no surrogate installed in {store.models_dir()} "
                                                    "(`facepriv models install`) and no --surrogate"}
            elif elapsed > a.budget_s:
                res["sections"][name] = {"skipped": f"time: {elapsed:.0f} s > --budget-s {a.budget_s:g}"}
            else:
                _log(f"gpu_check: {name} ...")
                t = time.perf_counter()
                try:
                    res["sections"][name] = SECTIONS[name](bench, a, photos, work / name, dev)
                except Exception as e:  # noqa: BLE001 - recorded; the other sections still run
                    traceback.print_exc()
                    res["sections"][name] = {"error": f"{type(e).__name__}: {e}"}
                res["sections"][name]["section_s"] = time.perf_counter() - t
            if "skipped" in res["sections"][name]:
                print(f"{name}: skipped: {res['sections'][name]['skipped']}", flush=True)
            res["wall_s"] = time.perf_counter() - t0
            _write(a.out, res)
    except KeyboardInterrupt:  # gpu_check.sh's timeout: keep what finished, say what did not
        res["sections"][name] = {"error": "interrupted (the script's time limit, or ^C)"}
        res["wall_s"] = time.perf_counter() - t0
        _write(a.out, res)
        print(f"gpu_check: interrupted in {name} after {res['wall_s']:.0f} s; wrote {a.out}", flush=True)
        return 124
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"gpu_check: {res['wall_s']:.0f} s; wrote {a.out}", flush=True)
    return 1 if any("error" in v for v in res["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
