"""Benchmark (not a test): Ray-path throughput for 1 and 2 workers vs a plain in-process loop.

    python benchmarks/ray_scaling.py [--photos DIR] [--n 60] [--model model.pt]

All three runs cloak the same photos with the same settings (fgsm, judged on the written
files) in one process, each into a fresh DST, with one torch thread per worker:
  in-process  facepriv.runner.run_in_process (Cloaker.process in a plain loop)
  ray x1      facepriv.runner.run_cloak, 1 worker actor
  ray x2      facepriv.runner.run_cloak, 2 worker actors
Two rates are printed per run: end-to-end (listing + actor start + model load + all photos)
and steady (photos after the first batch arrived / time from then to the last batch), since
the in-process loop loads its model before its clock starts. Ratios are of the rates measured
here, side by side; the load average is printed because the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pick_photos(src_root: Path, n: int, dst: Path) -> int:
    files = sorted(p for p in src_root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    for f in files:
        out = dst / f.relative_to(src_root)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, out)
    return len(files)


class Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.first_n = 0
        self.last = self.t0

    def __call__(self, rows) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first, self.first_n = now, len(rows)
        self.last = now

    def rates(self, n: int) -> tuple[float, float | None]:
        e2e = n / (self.last - self.t0)
        steady = (n - self.first_n) / (self.last - self.first) if self.first and self.last > self.first else None
        return e2e, steady


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default="../shared/data/lfw50", help="photo folder (default ../shared/data/lfw50)")
    ap.add_argument("--n", type=int, default=60, help="photos to cloak per run (default 60)")
    ap.add_argument("--model", default="/tmp/lfw/model.pt", help="surrogate checkpoint (default /tmp/lfw/model.pt)")
    ap.add_argument("--batch-size", type=int, default=4, help="photos per worker call (default 4)")
    args = ap.parse_args()

    import torch

    from facepriv.pipeline import CloakSettings
    from facepriv.runner import init_ray, run_cloak, run_in_process

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="fpbench"))
    src = work / "src"
    n = pick_photos(Path(args.photos), args.n, src)
    settings = CloakSettings(model=args.model, attack="fgsm", eps=8, labels="folder")
    print(f"{n} photos from {args.photos}, fgsm eps 8, judged; batch {args.batch_size}; "
          f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()}", flush=True)

    results: dict[str, tuple[float, float | None]] = {}
    t = time.perf_counter()
    s = run_in_process(str(src), str(work / "inproc"), settings, batch_size=args.batch_size)
    assert s["inputs"] == n, s
    rate = n / s["seconds"]
    results["in-process"] = (n / (time.perf_counter() - t), rate)  # steady: model loaded before its clock
    init_ray(None)
    import ray

    print(f"ray cluster: {ray.cluster_resources().get('CPU')} CPUs", flush=True)
    for workers in (1, 2):
        clock = Clock()
        s = run_cloak(str(src), str(work / f"ray{workers}"), settings, workers=workers, torch_threads=1,
                      batch_size=args.batch_size, progress=False, log=lambda m: None, incremental=False,
                      on_rows=clock)
        assert s["inputs"] == n and s["errors"] == 0, s
        results[f"ray x{workers}"] = clock.rates(n)
    print(f"{'run':<12} {'end-to-end photos/s':>20} {'steady photos/s':>16}")
    for k, (e2e, steady) in results.items():
        print(f"{k:<12} {e2e:>20.2f} {steady if steady is not None else float('nan'):>16.2f}")
    r1, r2, ip = results["ray x1"], results["ray x2"], results["in-process"]
    print(f"scaling ray x2 / ray x1:        steady {r2[1] / r1[1]:.2f}x, end-to-end {r2[0] / r1[0]:.2f}x "
          f"(target >= 1.7x)")
    print(f"ray x1 / in-process loop:       steady {r1[1] / ip[1]:.2f}x, end-to-end {r1[0] / ip[0]:.2f}x "
          f"(target >= 0.9x)")
    print(f"load average after: {os.getloadavg()}")
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
