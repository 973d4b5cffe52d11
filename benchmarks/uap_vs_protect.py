"""The universal cloak's apply against the per-photo --preset protect, side by side in one run.

    python benchmarks/uap_vs_protect.py PHOTOS --perturbation v.npy [--n 30] [--workers 2]
           [--min-face-quality 50] [--top-up N [--top-up-above C]] [--out DIR]

The first N photos under PHOTOS (sorted by key) are copied into one SRC; then, one after the
other in this run, on the same photos and the same --workers:

* ``facepriv cloak SRC DST_protect --preset protect`` (embed-pgd, 40 steps on the installed
  surrogates, per-face quality budget);
* ``facepriv cloak SRC DST_uap --attack uap --perturbation v.npy --min-face-quality 50``
  (MTCNN + v drawn into each face + the same budget; no surrogate);
* with --top-up N, the same plus ``--top-up N --top-up-above C`` (N embed-pgd steps from the
  universal cloak for the faces the surrogate still finds close), and its steps per face from
  the manifest against the preset's.

Both with --no-judge (the judges run afterwards with `facepriv report`). For each: the wall
time of the command (Ray start-up included, the same for both) and the manifest's per-photo
seconds (t_total: read, detect, attack, write; start-up excluded). Prints a JSON summary with
s/photo and the ratio protect / uap of each. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def manifest_seconds(dst: str) -> dict[str, float]:
    import fsspec

    from facepriv.io.manifest import read_manifest

    fs = fsspec.filesystem("file")
    rows = read_manifest(fs, os.path.join(dst, "_facepriv", "runs")).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    tot = sum(r.get("t_total") or 0.0 for r in ok)
    att = sum(r.get("t_attack") or 0.0 for r in ok)
    steps = [f.get("steps") or 0 for r in ok for f in (r.get("faces") or [])]
    return {"photos": len(ok), "faces": sum(r.get("n_faces") or 0 for r in ok), "t_total": tot, "t_attack": att,
            "steps_per_face": sum(steps) / len(steps) if steps else None}


def run(name: str, cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"{name}: exit {p.returncode}")
    return {"wall_s": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos")
    ap.add_argument("--perturbation", required=True)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--min-face-quality", type=float, default=50.0)
    ap.add_argument("--top-up", type=int, default=0, help="also time --attack uap --top-up N (default 0: not)")
    ap.add_argument("--top-up-above", type=float, default=0.4)
    ap.add_argument("--out", default=None, help="keep SRC and the DSTs here (default: a temporary folder)")
    a = ap.parse_args(argv)
    root = Path(a.out or tempfile.mkdtemp(prefix="uap_vs_protect_"))
    src = root / "src"
    keys = sorted(p.relative_to(a.photos) for p in Path(a.photos).rglob("*") if p.is_file())[: a.n]
    for k in keys:
        (src / k).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(a.photos) / k, src / k)
    base = [sys.executable, "-m", "facepriv.cli", "cloak", str(src)]
    common = ["--workers", str(a.workers), "--no-judge", "--no-progress"]
    res = {"photos": len(keys), "workers": a.workers}
    uap = ["--attack", "uap", "--perturbation", a.perturbation, "--min-face-quality", str(a.min_face_quality)]
    variants = [("protect", ["--preset", "protect"]), ("uap", uap)]
    if a.top_up:
        variants.append(("uap_top_up", uap + ["--top-up", str(a.top_up), "--top-up-above", str(a.top_up_above)]))
    for name, extra in variants:
        dst = root / f"dst_{name}"
        if dst.exists():
            shutil.rmtree(dst)
        r = run(name, base + [str(dst)] + extra + common)
        r.update(manifest_seconds(str(dst)))
        r["s_per_photo_wall"] = r["wall_s"] / max(len(keys), 1)
        r["s_per_photo_pipeline"] = r["t_total"] / max(r["photos"], 1)
        res[name] = r
        print(f"{name}: {r['wall_s']:.1f} s wall, {r['s_per_photo_pipeline']:.3f} s/photo in the pipeline",
              file=sys.stderr, flush=True)
    res["speedup_wall"] = res["protect"]["wall_s"] / res["uap"]["wall_s"]
    res["speedup_pipeline"] = res["protect"]["t_total"] / max(res["uap"]["t_total"], 1e-9)
    if a.top_up:
        t = res["uap_top_up"]
        t["speedup_wall"] = res["protect"]["wall_s"] / t["wall_s"]
        t["speedup_pipeline"] = res["protect"]["t_total"] / max(t["t_total"], 1e-9)
        # the manifest counts the universal addition as 1 step and each top-up step as one more
        t["top_up_steps_per_face"] = (t["steps_per_face"] or 1) - 1
        t["steps_saved_vs_protect"] = 1 - t["top_up_steps_per_face"] / res["protect"]["steps_per_face"]
    res["out"] = str(root)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
