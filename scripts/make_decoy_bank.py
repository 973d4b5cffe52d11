"""Build the decoy banks for ``--embed-loss decoy`` (facepriv/models/decoys.py).

    FACEPRIV_HOME=/work/fphome python scripts/make_decoy_bank.py --data ../shared/data/lfw50

For every identity folder of --data (sorted by name) and every photo in it: facepriv's own
MTCNN detection (`faces.FaceDetector`, the cloak defaults), the face nearest the photo's
centre, its region as the attack sees it (`geometry.jpeg_region`, margin 0.25) and each
surrogate's own 5-point alignment of that region (`JitteredAlign(net, landmarks, p=0)`, as
`embed_strategy` embeds clean faces). An identity's bank row is the mean of its photos' unit
embeddings, unit-normalised; the bank (N x D float16, the identity names, the surrogate's
weights sha256) is written as ``<name>-<sha256[:16]>.npz`` into --out (default: the
package's facepriv/models/decoy_banks/; ``$FACEPRIV_HOME/decoys`` for a surrogate of your own).
Surrogates: --surrogate specs (default every installed one); all banks of one run share the
identities, in the same order, as an ensemble needs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from facepriv.core import geometry
from facepriv.io import imageio
from facepriv.attacks.embed_pgd import JitteredAlign
from facepriv.models.decoys import PACKAGE_DIR, bank_name, save_bank
from facepriv.pipeline.faces import DetectorSettings, FaceDetector
from facepriv.models.store import installed, load_surrogate, parse_specs, weights_sha256

EXTS = (".jpg", ".jpeg", ".png")


def faces_of(folder: str, detector: FaceDetector, margin: float) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """The face nearest the centre of each photo in `folder`: (region pixels (3,h,w) in [0,1],
    landmarks (5,2) in region coordinates); photos without a face are skipped."""
    regions, lms = [], []
    for f in sorted(os.listdir(folder)):
        if not f.lower().endswith(EXTS):
            continue
        with open(os.path.join(folder, f), "rb") as fh:
            rgb = imageio.decode(fh.read()).rgb
        (det,) = detector.detect([rgb])
        if len(det) == 0:
            continue
        h, w = rgb.shape[:2]
        i = geometry.nearest_to_centre(det.boxes, w, h)
        x0, y0, x1, y1 = geometry.jpeg_region(det.boxes[i], w, h, margin)
        regions.append(torch.from_numpy(np.ascontiguousarray(rgb[y0:y1, x0:x1])).permute(2, 0, 1).float() / 255)
        lms.append(det.landmarks[i] - np.array([x0, y0], np.float32))
    return regions, lms


@torch.no_grad()
def embed(net, regions: list[torch.Tensor], lms: list[np.ndarray], batch: int = 32) -> np.ndarray:
    out = []
    for s in range(0, len(regions), batch):
        r, lm = regions[s : s + batch], np.stack(lms[s : s + batch])
        m = JitteredAlign(net, lm, p=0.0, sizes=[tuple(t.shape[1:]) for t in r])
        out.append(torch.nn.functional.normalize(m(geometry.pack(r)).flatten(1), dim=1).numpy())
    return np.concatenate(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a folder of identity folders (e.g. ../shared/data/lfw50)")
    ap.add_argument("--surrogate", default=None, help="comma-separated surrogate specs (default: every installed one)")
    ap.add_argument("--out", default=PACKAGE_DIR, help="where to write the banks (default: %(default)s)")
    ap.add_argument("--margin", type=float, default=0.25, help="face region margin, as `facepriv cloak` (0.25)")
    a = ap.parse_args(argv)
    specs = parse_specs(a.surrogate) or installed()
    if not specs:
        print("make_decoy_bank: no surrogate installed (facepriv models install) and none given", file=sys.stderr)
        return 2
    ids = sorted(d for d in os.listdir(a.data) if os.path.isdir(os.path.join(a.data, d)))
    if not ids:
        print(f"make_decoy_bank: no identity folders in {a.data}", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    detector = FaceDetector(DetectorSettings(), torch.device("cpu"))
    t = time.perf_counter()
    faces = {k: faces_of(os.path.join(a.data, k), detector, a.margin) for k in ids}
    empty = [k for k, (r, _) in faces.items() if not r]
    if empty:
        print(f"make_decoy_bank: no face found for {', '.join(empty)}", file=sys.stderr)
        return 2
    n = sum(len(r) for r, _ in faces.values())
    print(f"{len(ids)} identities, {n} faces ({time.perf_counter() - t:.0f}s)", file=sys.stderr)
    for spec in specs:
        net = load_surrogate(spec).eval()
        rows = [embed(net, *faces[k]).mean(0) for k in ids]
        sha = weights_sha256(net)
        name = getattr(net, "name", None) or os.path.splitext(os.path.basename(spec))[0]
        path = os.path.join(a.out, bank_name(name, sha))
        save_bank(path, np.stack(rows), ids, sha)
        print(f"{spec}: {len(ids)} x {rows[0].shape[0]} -> {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
