"""Shared fixtures. Plain helpers (fake models, judges, S3 server) are in tests/helpers.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from facepriv.core import geometry
from facepriv.io import manifest

from helpers import FIXTURES, checkerboard


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """SRC (4 fixture photos as PNG), DST with 2 'cloaked' (checkerboard) and 2 unchanged outputs,
    and two hand-made runs (fgsm eps 4 and 8) with MTCNN's real boxes."""
    from facepriv.pipeline.faces import FaceDetector

    base = tmp_path_factory.mktemp("report")
    src, dst = base / "src", base / "dst"
    det = FaceDetector()
    rows = []
    for ident in ("Colin_Powell", "Gerhard_Schroeder"):
        for n in (1, 2):
            key = f"{ident}/{ident}_000{n}.png"
            rgb = np.asarray(Image.open(os.path.join(FIXTURES, ident, f"{ident}_000{n}.jpg")).convert("RGB"))
            (src / ident).mkdir(parents=True, exist_ok=True)
            (dst / ident).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(src / key)
            d = det.detect([rgb])[0]
            i = geometry.nearest_to_centre(d.boxes, rgb.shape[1], rgb.shape[0])
            out = checkerboard(rgb, d.boxes[i]) if n == 1 else rgb
            Image.fromarray(out).save(dst / key)
            judged = ident == "Colin_Powell"  # the fake surrogate only knows Colin when clean
            f = {"box": [float(v) for v in d.boxes[i]], "prob": 0.99,
                 "landmarks": [float(v) for v in d.landmarks[i].reshape(-1)], "label": ident,
                 "clean_pred": "Colin_Powell", "cloaked_pred": "Gerhard_Schroeder" if n == 1 else "Colin_Powell",
                 "judged": judged, "fooled": (n == 1) if judged else None, "redetected": True}
            rows.append(manifest.empty_row(source_key=key, output_key=key, status="ok", format="PNG", faces=[f],
                                           n_faces=1, psnr=30.0 if n == 1 else float("inf"), ssim=0.9 if n == 1 else 1.0,
                                           attack="fgsm", eps=8.0, model="fake.pt", settings_json="{}",
                                           width=rgb.shape[1], height=rgb.shape[0], t_total=1.0))
    rows.append(manifest.empty_row(source_key="bad.jpg", output_key="bad.jpg", status="error",
                                   reason="not an image: the content is no format Pillow can read", attack="fgsm",
                                   eps=8.0, model="fake.pt"))
    for rid, eps, fooled_scale in (("R8", 8.0, True), ("R4", 4.0, False)):
        rr = [dict(r, run_id=rid, eps=eps, faces=[dict(f, fooled=(f["fooled"] and fooled_scale) if f["judged"] else None)
                                                 for f in r["faces"]]) for r in rows]
        (dst / "_facepriv" / "runs" / rid / "manifest").mkdir(parents=True)
        (dst / "_facepriv" / "runs" / rid / "manifest" / "part-00000.parquet").write_bytes(manifest.table_bytes(rr))
        (dst / "_facepriv" / "runs" / rid / "summary.json").write_text(json.dumps({"src": str(src), "eps": eps}))
    return {"src": str(src), "dst": str(dst), "base": base}
