"""Why some faces stay unfooled by PGD in the written files: capacity, JPEG or re-detection?

    python benchmarks/pgd_hard_faces.py RUN_DIR SRC --model model.pt [--eps 4] [--steps 10]

A diagnostic, not a test. RUN_DIR is a `facepriv cloak ... --labels folder` run
(`DST/_facepriv/runs/<run_id>`), SRC the folder it cloaked. For every judged face the run left
unfooled it attacks the original photo afresh, in the plainest setting - PGD on cross-entropy,
`--steps` steps of 1/255, L-inf `--eps`, one exact crop (no jitter views, no early stop) - and
prints the logit margin (true class minus best other; < 0 = fooled) of that cloak:

- `memory`: quantised to uint8, the crop the attack used;
- `png`: written losslessly, re-detected (the judge's crop);
- `jpeg`: written as `cloak` writes it (`imageio.jpeg_round_trip`, quality `--jpeg-quality`),
  the same crop as the attack;
- `jpeg+redetect`: the same file, re-detected: what the judge sees;

and the shift of the re-detected box (px). A face fooled in memory but not after `jpeg` or
`png` loses its cloak to the JPEG encoding or to the box the re-detection finds.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from facepriv.core import geometry
from facepriv.io import imageio  # noqa: E402
from facepriv.attacks.base import margin  # noqa: E402
from facepriv.attacks.pgd import pgd  # noqa: E402
from facepriv.pipeline.faces import FaceDetector  # noqa: E402
from facepriv.models.checkpoint import load_checkpoint  # noqa: E402


def unfooled(run_dir: str) -> list[tuple[str, str, np.ndarray]]:
    """(source key, label, original box) of every judged face the run left unfooled."""
    files = glob.glob(os.path.join(run_dir, "manifest", "*.parquet"))
    if not files:
        raise SystemExit(f"pgd_hard_faces: no manifest under {run_dir}/manifest")
    out = []
    for row in pq.read_table(files).to_pylist():
        for f in row["faces"] or []:
            if f["judged"] and f["fooled"] is False:
                out.append((row["source_key"], f["label"], np.asarray(f["box"], np.float32)))
    return out


def as_batch(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255)[None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("src")
    ap.add_argument("--model", required=True)
    ap.add_argument("--eps", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--jpeg-quality", type=int, default=95)
    a = ap.parse_args(argv)
    loaded = load_checkpoint(a.model)
    net, classes, size = loaded.model.eval(), loaded.classes, loaded.model.input_size
    det = FaceDetector()

    def logit_margin(rgb: np.ndarray, box, y: int) -> float:
        with torch.no_grad():
            return float(margin(net(geometry.crop_resize(as_batch(rgb), [box], size)), torch.tensor([y]))[0])

    def redetected(rgb: np.ndarray, box: np.ndarray):
        found = det.detect([rgb])[0].boxes
        if len(found) == 0:
            return None, None
        rb = found[geometry.iou(box[None], found).argmax()]
        h, w = rgb.shape[:2]
        return geometry.int_box(geometry.square_box(rb), w, h), rb - box

    faces = unfooled(a.run_dir)
    print(f"{len(faces)} judged faces left unfooled in {a.run_dir}; PGD eps {a.eps}, {a.steps} steps, exact crop")
    print(f"{'face':34s} {'clean':>7s} {'memory':>7s} {'png':>7s} {'jpeg':>7s} {'jpeg+redetect':>14s}  box shift (px)")
    counts = dict.fromkeys(("memory", "png", "jpeg", "jpeg+redetect"), 0)
    for key, label, box in faces:
        with open(os.path.join(a.src, key), "rb") as f:
            rgb = imageio.decode(f.read()).rgb
        h, w = rgb.shape[:2]
        y = classes.index(label)
        crop = geometry.int_box(geometry.square_box(box), w, h)
        model = geometry.CropModel(net, [crop], size)
        adv, _ = pgd(model, as_batch(rgb), torch.tensor([y]), eps=a.eps, steps=a.steps, alpha=1.0, early_stop=False)
        cloaked = adv[0].mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        jpeg = imageio.jpeg_round_trip(cloaked, a.jpeg_quality)
        png_box, _ = redetected(cloaked, box)
        jpeg_box, shift = redetected(jpeg, box)
        m = {"memory": logit_margin(cloaked, crop, y), "jpeg": logit_margin(jpeg, crop, y),
             "png": logit_margin(cloaked, png_box, y) if png_box else float("nan"),
             "jpeg+redetect": logit_margin(jpeg, jpeg_box, y) if jpeg_box else float("nan")}
        for k, v in m.items():
            counts[k] += v < 0
        print(f"{key[-34:]:34s} {logit_margin(rgb, crop, y):7.2f} {m['memory']:7.2f} {m['png']:7.2f} {m['jpeg']:7.2f} "
              f"{m['jpeg+redetect']:14.2f}  {np.round(shift, 1) if shift is not None else '-'}")
    print("fooled: " + ", ".join(f"{k} {v}/{len(faces)}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
