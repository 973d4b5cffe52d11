"""Rank-1 identification of imported TF.js face embedders on a labelled folder.

    python scripts/eval_tfjs.py --models ../shared/models/human-models-3.0.4 --data ../shared/data/lfw50

Per identity folder: photos sorted by name, the first `--gallery` are the gallery, the next
`--probes` are probes. MTCNN landmarks of the face nearest the image centre, 5-point
alignment (`facepriv.core.align`), cosine similarity to the gallery photos, nearest neighbour.
Landmarks are cached in `--cache` (npz) so reruns are cheap.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from PIL import Image

from facepriv.core.align import align_faces
from facepriv.models.tfjs import PRESETS, find_models, import_tfjs


def landmarks_for(paths: list[str], cache: str | None) -> np.ndarray:
    if cache and os.path.exists(cache):
        z = np.load(cache, allow_pickle=False)
        if list(z["paths"]) == paths:
            return z["lm"]
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu")
    out = np.full((len(paths), 5, 2), np.nan, np.float32)
    for i, p in enumerate(paths):
        img = Image.open(p).convert("RGB")
        boxes, _, lm = mtcnn.detect(img, landmarks=True)
        if boxes is None:
            continue
        c = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
        j = int(np.argmin(((c - np.array([img.width / 2, img.height / 2])) ** 2).sum(1)))
        out[i] = lm[j]
    if cache:
        np.savez(cache, paths=np.array(paths), lm=out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--names", default=",".join(PRESETS))
    ap.add_argument("--gallery", type=int, default=10)
    ap.add_argument("--probes", type=int, default=5)
    ap.add_argument("--cache", default="/tmp/facepriv_eval_tfjs_landmarks.npz")
    ap.add_argument("--template", default=None, help="override the model's crop template")
    args = ap.parse_args()

    ids = sorted(d for d in os.listdir(args.data) if os.path.isdir(os.path.join(args.data, d)))
    paths, labels, is_probe = [], [], []
    for k, d in enumerate(ids):
        files = sorted(os.listdir(os.path.join(args.data, d)))[: args.gallery + args.probes]
        for j, f in enumerate(files):
            paths.append(os.path.join(args.data, d, f))
            labels.append(k)
            is_probe.append(j >= args.gallery)
    labels_a, probe = np.array(labels), np.array(is_probe)
    t0 = time.time()
    lms = landmarks_for(paths, args.cache)
    print(f"{len(paths)} photos, landmarks in {time.time() - t0:.1f}s, missing {int(np.isnan(lms[:, 0, 0]).sum())}")
    imgs = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255).permute(2, 0, 1) for p in paths]
    found = find_models(args.models)
    for name in args.names.split(","):
        net = import_tfjs(found[name])
        size, tmpl = net.input_size, args.template or net.crop
        ok = ~np.isnan(lms[:, 0, 0])
        t1 = time.time()
        crops = torch.cat([align_faces(imgs[i], lms[i : i + 1], size, tmpl) for i in np.flatnonzero(ok)])
        t_align = time.time() - t1
        embs = []
        t2 = time.time()
        with torch.no_grad():
            for b in range(0, len(crops), 64):
                embs.append(net(crops[b : b + 64]))
        t_embed = time.time() - t2
        e = torch.nn.functional.normalize(torch.cat(embs), dim=1).numpy()
        lab, pr = labels_a[ok], probe[ok]
        sim = e[pr] @ e[~pr].T
        pred = lab[~pr][sim.argmax(1)]
        hits = (pred == lab[pr]).sum()
        n_probe = int(probe.sum())  # undetected probes count as misses
        print(f"{name}: rank-1 {hits / n_probe:.3f} ({hits}/{n_probe}), dim {e.shape[1]}, "
              f"align {1000 * t_align / len(crops):.1f} ms/face, embed {1000 * t_embed / len(crops):.1f} ms/face "
              f"(CPU, {torch.get_num_threads()} threads, batch 64)")


if __name__ == "__main__":
    main()
