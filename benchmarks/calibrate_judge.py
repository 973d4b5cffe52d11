"""Choose a judge's verification threshold on clean photos, and check its clean identification.

    python benchmarks/calibrate_judge.py sface ../shared/data/lfw50
    python benchmarks/calibrate_judge.py dlib,sface ../shared/data/lfw50 [--json out.json]

DATA is DIR/<identity>/<photos>. Every photo's central face (MTCNN, facepriv's default
detector settings) is embedded by each judge. Verification pairs: all same-identity pairs and
as many different-identity pairs drawn at random (seed 0) without repetition; the threshold
reported as *best* maximises accuracy on that balanced set (a pair "matches" when its
distance <= threshold, the judges' rule). Also reported: the thresholds at FAR 1e-2 / 1e-3 and
accuracy / FAR / FRR at the judge's current default threshold. Identification: gallery = the
first 10 photos (sorted by name) of each identity, probes = the last 5; rank-1 accuracy and the
fraction recognised (rank-1 correct within the threshold). Timing: milliseconds per face of
`judge.embed` (alignment + network), one face per call, on this machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from facepriv.pipeline.faces import FaceDetector  # noqa: E402
from facepriv.judges import central_face, faces_from_detection, get_judge, pairwise_distances  # noqa: E402
from facepriv.judges.base import IMAGE_EXTS  # noqa: E402

GALLERY_FIRST = 10


def photos(root: str) -> list[tuple[str, str]]:
    out = []
    for ident in sorted(os.listdir(root)):
        d = os.path.join(root, ident)
        if os.path.isdir(d) and not ident.startswith((".", "_")):
            out += [(ident, os.path.join(d, f)) for f in sorted(os.listdir(d)) if f.lower().endswith(IMAGE_EXTS)]
    return out


def pairs(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(same-identity index pairs (all), different-identity pairs (as many, sampled)), each (n, 2)."""
    i, j = np.triu_indices(len(labels), 1)
    same = labels[i] == labels[j]
    s = np.stack([i[same], j[same]], 1)
    d = np.stack([i[~same], j[~same]], 1)
    rng = np.random.default_rng(seed)
    return s, d[rng.choice(len(d), size=min(len(s), len(d)), replace=False)]


def best_threshold(same: np.ndarray, diff: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising (TP + TN) / (n_same + n_diff), matches = distance <= t;
    the threshold is the midpoint between the two distances it separates."""
    d = np.concatenate([same, diff])
    y = np.concatenate([np.ones(len(same), bool), np.zeros(len(diff), bool)])
    order = np.argsort(d, kind="stable")
    d, y = d[order], y[order]
    # accepting the first k pairs (k = 0..n): correct = same among them + diff beyond them
    tp = np.concatenate([[0], np.cumsum(y)])
    fp = np.concatenate([[0], np.cumsum(~y)])
    correct = tp + (len(diff) - fp)
    k = int(np.argmax(correct))
    lo = d[k - 1] if k > 0 else d[0] - 1e-6
    hi = d[k] if k < len(d) else d[-1] + 1e-6
    return float((lo + hi) / 2), float(correct[k] / len(d))


def at_far(diff: np.ndarray, far: float) -> float:
    """The largest threshold whose false accept rate on `diff` is <= far."""
    d = np.sort(diff)
    k = int(np.floor(far * len(d)))  # this many impostors may be accepted
    return float(d[k] - 1e-6) if k < len(d) else float(d[-1])


def rates(same: np.ndarray, diff: np.ndarray, t: float) -> dict[str, float]:
    far, frr = float((diff <= t).mean()), float((same > t).mean())
    return {"threshold": t, "accuracy": float(((same <= t).sum() + (diff > t).sum()) / (len(same) + len(diff))),
            "far": far, "frr": frr}


def identification(emb: np.ndarray, labels: np.ndarray, order: np.ndarray, metric: str, t: float
                   ) -> dict[str, float]:
    """Gallery = the first GALLERY_FIRST photos of each identity, probes = the rest."""
    gal = order < GALLERY_FIRST
    d = pairwise_distances(emb[~gal], emb[gal], metric)
    nn = d.argmin(1)
    hit = labels[gal][nn] == labels[~gal]
    return {"probes": int((~gal).sum()), "gallery": int(gal.sum()), "rank1": float(hit.mean()),
            "recognised": float((hit & (d[np.arange(len(nn)), nn] <= t)).mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("judges", help="judge spec(s), comma-separated: dlib,sface")
    ap.add_argument("data", help="DIR/<identity>/<photos>")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    a = ap.parse_args(argv)
    from PIL import Image

    items = photos(a.data)
    det = FaceDetector()
    faces, rgbs, labels, order, missing = [], [], [], [], []
    t0 = time.perf_counter()
    for k, (ident, path) in enumerate(items):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        fs = faces_from_detection(det.detect([rgb])[0])
        i = central_face(fs, rgb.shape)
        if i is None:
            missing.append(path)
            continue
        n_before = sum(1 for x in items[:k] if x[0] == ident)
        faces.append(fs[i])
        rgbs.append(rgb)
        labels.append(ident)
        order.append(n_before)
    labels_a, order_a = np.array(labels, dtype=object), np.array(order)
    print(f"{len(items)} photos, {len(set(labels))} identities, {len(faces)} faces "
          f"({len(missing)} without a face) detected in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    s_idx, d_idx = pairs(labels_a, a.seed)
    result: dict = {"data": a.data, "photos": len(items), "faces": len(faces), "no_face": missing,
                    "same_pairs": len(s_idx), "diff_pairs": len(d_idx), "seed": a.seed, "judges": {}}
    for spec in [s for s in a.judges.split(",") if s]:
        judge = get_judge(spec)
        judge.embed(rgbs[0], [faces[0]])  # warm-up
        t = time.perf_counter()
        emb = np.concatenate([judge.embed(r, [f]) for r, f in zip(rgbs, faces)])
        ms = (time.perf_counter() - t) / len(faces) * 1000
        m = judge.metric
        full = pairwise_distances(emb, emb, m)
        same, diff = full[s_idx[:, 0], s_idx[:, 1]], full[d_idx[:, 0], d_idx[:, 1]]
        t_best, acc = best_threshold(same, diff)
        r = {"metric": m, "default_threshold": judge.threshold, "ms_per_face": ms,
             "same": {"mean": float(same.mean()), "p95": float(np.quantile(same, 0.95)), "max": float(same.max())},
             "diff": {"mean": float(diff.mean()), "p05": float(np.quantile(diff, 0.05)), "min": float(diff.min())},
             "best": rates(same, diff, t_best), "far_1e-2": rates(same, diff, at_far(diff, 1e-2)),
             "far_1e-3": rates(same, diff, at_far(diff, 1e-3)), "at_default": rates(same, diff, judge.threshold),
             "identification_at_default": identification(emb, labels_a, order_a, m, judge.threshold),
             "identification_at_best": identification(emb, labels_a, order_a, m, t_best)}
        result["judges"][spec] = r
        print(f"\n{spec} ({m}; default threshold {judge.threshold}; {ms:.1f} ms/face)")
        print(f"  same-identity distance mean {r['same']['mean']:.4f} p95 {r['same']['p95']:.4f}; "
              f"different mean {r['diff']['mean']:.4f} p05 {r['diff']['p05']:.4f}")
        for key in ("best", "far_1e-2", "far_1e-3", "at_default"):
            v = r[key]
            print(f"  {key:10s} threshold {v['threshold']:.4f}: accuracy {v['accuracy']:.4f} "
                  f"FAR {v['far']:.4f} FRR {v['frr']:.4f}")
        for key in ("identification_at_default", "identification_at_best"):
            v = r[key]
            print(f"  {key}: rank-1 {v['rank1']:.4f}, recognised within threshold {v['recognised']:.4f} "
                  f"({v['probes']} probes, {v['gallery']} gallery photos)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
