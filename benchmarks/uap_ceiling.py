"""An in-sample bound on a universal perturbation's fooling rate in written files.

    python benchmarks/uap_ceiling.py --model model.pt --photos test/ --out ceiling/ \
        [--xi 10] [--passes 100] [--v uap.npy ...]

A diagnostic, not a test. Issue 4 asks for a v fitted on the *train* faces to fool >= 0.64 of
the *held-out* faces, judged on the files `uap apply` writes. This fits the most favourable v
there can be for that measure: one fitted on the held-out faces themselves (the faces under
PHOTOS/<identity>/ the model classifies correctly, the ones the judge counts), through exactly
what applying and judging do to it, and then judges it (and any `--v` files) with the real
pipeline (`facepriv uap apply ... --labels folder`, in-process). A v fitted on other faces
cannot be expected to beat this on these faces.

The chain a face goes through in the fit (per face, at the photo's own resolution):
- v resized to the face's square crop box and added (`uap_apply.add_universal`) to the
  original pixels there, clamped, rounded to uint8 and round-tripped through the file's
  encoding (JPEG q95 for JPEG photos) on the face's region aligned to the 8x8 JPEG grid (the
  pipeline's region, so the round trip is the file's); straight-through gradients;
- cropped where the judge will crop: the crop box of the face as MTCNN re-detects it in the
  written photo (re-measured every `--redetect-every` passes with the current v), moved by up
  to `--jitter` px per side at random, and resized to the model's input.
Steps: the robust fit's (`facepriv.attacks.uap_robust`): signed gradient of the logit margin
(true class over the best other, clamped at -kappa) summed over a mini-batch, projected onto
the L-inf xi ball, step xi * lr decaying linearly.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from facepriv.core import geometry
from facepriv.io import imageio  # noqa: E402
from facepriv.io.archive import Archive, storage_options  # noqa: E402
from facepriv.attacks.base import margin  # noqa: E402
from facepriv.attacks.uap import project  # noqa: E402
from facepriv.attacks.uap_robust import step_size  # noqa: E402
from facepriv.pipeline.faces import Detection, FaceDetector  # noqa: E402
from facepriv.models.checkpoint import load_checkpoint  # noqa: E402
from facepriv.core.settings import CloakSettings
from facepriv.pipeline.judge import match_faces as _match  # noqa: E402
from facepriv.distributed.runner import run_in_process  # noqa: E402
from facepriv.strategies.uap import add_universal  # noqa: E402


@dataclass
class Face:
    """The labelled (central) face of one photo, as the pipeline cuts it."""

    key: str
    decoded: imageio.Decoded
    det_box: np.ndarray  # MTCNN's box in the original photo
    region: tuple[int, int, int, int]  # photo coordinates, aligned to the 8x8 JPEG grid
    pixels: torch.Tensor  # (3, h, w) the region's original pixels in [0, 1]
    crop: tuple[int, int, int, int]  # square crop box in region coordinates (where v goes)
    label: int
    offset: np.ndarray  # (4,) int: re-detected crop box minus `crop` (where the judge crops)


def judged_faces(photos: str, net, classes: list[str], detector: FaceDetector, margin_: float = 0.25) -> list[Face]:
    """The photos' central faces whose identity is a class and which the model gets right."""
    archive = Archive(photos, storage_options(photos))
    cidx = {c: i for i, c in enumerate(classes)}
    out = []
    for key in archive.list_images():
        ident = posixpath.basename(posixpath.dirname(key))
        if ident not in cidx:
            continue
        dec = imageio.decode(archive.read_bytes(key))
        det = detector.detect([dec.rgb])[0]
        if not len(det):
            continue
        h, w = dec.rgb.shape[:2]
        i = geometry.nearest_to_centre(det.boxes, w, h)
        rx0, ry0, rx1, ry1 = geometry.jpeg_region(det.boxes[i], w, h, margin_)
        cx0, cy0, cx1, cy1 = geometry.int_box(geometry.square_box(det.boxes[i]), w, h)
        px = torch.from_numpy(dec.rgb[ry0:ry1, rx0:rx1].copy()).permute(2, 0, 1).float().div_(255)
        f = Face(key, dec, det.boxes[i], (rx0, ry0, rx1, ry1), px, (cx0 - rx0, cy0 - ry0, cx1 - rx0, cy1 - ry0),
                 cidx[ident], np.zeros(4, np.int64))
        with torch.no_grad():
            if int(net(geometry.crop_resize(px[None], [f.crop], net.input_size)).argmax()) == f.label:
                out.append(f)
    return out


def cloak_region(f: Face, v: torch.Tensor) -> torch.Tensor:
    """The face's region with v (resized to its crop box) added inside the crop box, clamped."""
    return add_universal(f.pixels[None], [f.crop], v)[0]


def view(f: Face, v: torch.Tensor, gen: torch.Generator | None, jitter: int, jpeg: bool) -> torch.Tensor:
    """(1, 3, S, S): what the model sees of the written face, differentiable in v."""
    z = cloak_region(f, v)
    z = z + ((z * 255).round() / 255 - z).detach()
    if jpeg and f.decoded.format == "JPEG":
        u8 = (z.detach() * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        back = torch.from_numpy(imageio.jpeg_round_trip(u8, 95)).permute(2, 0, 1).float().div_(255)
        z = z + (back - z).detach()
    d = f.offset.copy()
    if gen is not None and jitter:
        d += torch.randint(-jitter, jitter + 1, (4,), generator=gen).numpy()
    _, h, w = z.shape
    x0, y0, x1, y1 = (int(a) + int(b) for a, b in zip(f.crop, d))
    x0, y0 = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    x1, y1 = max(min(x1, w), x0 + 1), max(min(y1, h), y0 + 1)
    return geometry.crop_resize(z[None], [(x0, y0, x1, y1)], v.shape[-1])


@torch.no_grad()
def redetect(faces: list[Face], v: torch.Tensor, detector: FaceDetector) -> None:
    """Write each photo with v on its face (encoded as the pipeline encodes it), re-detect it
    with MTCNN and store where the judge will crop (the matched box's crop box) as the offset."""
    backs = []
    for f in faces:
        rgb = f.decoded.rgb.copy()
        rx0, ry0, rx1, ry1 = f.region
        rgb[ry0:ry1, rx0:rx1] = cloak_region(f, v).mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        data, _ = imageio.encode(rgb, f.decoded, 95, False)
        backs.append(imageio.decode(data, max_pixels=2**62).rgb)
    for f, rgb, rd in zip(faces, backs, detector.detect(backs)):
        h, w = rgb.shape[:2]
        _, boxes = _match(Detection(f.det_box[None], np.ones(1, np.float32), np.zeros((1, 5, 2), np.float32)), rd)
        rb = np.array(geometry.int_box(geometry.square_box(boxes[0]), w, h)) - np.tile(f.region[:2], 2)
        f.offset = rb - np.array(f.crop)


def fit_in_sample(net, faces: list[Face], detector: FaceDetector, xi: float, passes: int, lr: float, kappa: float,
                  batch: int, jitter: int, redetect_every: int, seed: int = 0, log=print) -> torch.Tensor:
    s = net.input_size
    v = torch.zeros(3, s, s)
    gen = torch.Generator().manual_seed(seed)
    y = torch.tensor([f.label for f in faces])
    t0 = time.perf_counter()
    for p in range(1, passes + 1):
        order = torch.randperm(len(faces), generator=gen).tolist()
        step = step_size(xi, lr, p, passes)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            vv = v.clone().requires_grad_(True)
            logits = net(torch.cat([view(faces[k], vv, gen, jitter, True) for k in idx]))
            (g,) = torch.autograd.grad(margin(logits, y[idx]).clamp(min=-kappa).sum(), vv)
            v = project(v - step * g.sign(), xi, "linf")
        if redetect_every and (p % redetect_every == 0 or p == passes):
            redetect(faces, v, detector)
        with torch.no_grad():
            pred = torch.cat([net(view(f, v, None, 0, True)).argmax(1) for f in faces])
        log(f"pass {p:3d}: in-sample fooling rate at the judge's crop {float((pred != y).float().mean()):.3f}  "
            f"mean |re-detected - placed| {np.abs(np.stack([f.offset for f in faces])).mean():.2f} px  "
            f"{time.perf_counter() - t0:.0f}s")
    return v


def judge(v_path: str, photos: str, model: str, dst: str) -> dict:
    """`facepriv uap apply PHOTOS DST --uap V --model MODEL --labels folder`, in-process."""
    v = np.load(v_path)
    settings = CloakSettings(model=model, attack="uap", eps=round(float(abs(v).max()) * 255, 4), labels="folder",
                             extra={"uap": v_path})
    return run_in_process(photos, dst, settings)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="classifier checkpoint from `facepriv train` (also the judge)")
    p.add_argument("--photos", required=True, help="held-out photos, PHOTOS/<identity>/<photo>")
    p.add_argument("--out", required=True, help="folder for the in-sample v and the written photos")
    p.add_argument("--xi", type=float, default=10.0, help="L-inf bound, 0-255 units (default 10)")
    p.add_argument("--passes", type=int, default=100, help="passes over the faces (default 100)")
    p.add_argument("--lr", type=float, default=0.25, help="first step as a fraction of xi (default 0.25)")
    p.add_argument("--kappa", type=float, default=5.0, help="margin clamp in logits (default 5)")
    p.add_argument("--batch", type=int, default=16, help="faces per signed step (default 16)")
    p.add_argument("--jitter", type=int, default=1, help="random px per crop side around the judge's crop (default 1)")
    p.add_argument("--redetect-every", type=int, default=5,
                   help="re-detect the written photos every N passes (default 5; 0 = crop where v was placed)")
    p.add_argument("--v", nargs="*", default=[], help="other perturbations (.npy from `facepriv uap fit`) to judge")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    loaded = load_checkpoint(a.model)
    net = loaded.model
    for q in net.parameters():
        q.requires_grad_(False)
    detector = FaceDetector()
    faces = judged_faces(a.photos, net, loaded.classes, detector)
    print(f"{len(faces)} held-out faces the model classifies correctly; xi {a.xi:g}", flush=True)
    if not faces:
        print(f"nothing to fit: no photo under {a.photos}/<identity>/ has a central face the model gets right "
              "(are the folder names the model's classes?)", file=sys.stderr)
        return 1
    v = fit_in_sample(net, faces, detector, a.xi, a.passes, a.lr, a.kappa, a.batch, a.jitter, a.redetect_every,
                      log=lambda m: print(m, flush=True))
    oracle = os.path.join(a.out, "in_sample.npy")
    np.save(oracle, v.numpy().astype(np.float32))
    rows = []
    for name, path in [("in-sample (fitted on these faces)", oracle)] + [(os.path.basename(x), x) for x in a.v]:
        s = judge(path, a.photos, a.model, os.path.join(a.out, f"written-{len(rows)}"))
        rows.append((name, s))
    print(f"\nwritten files, judged by `uap apply --labels folder` ({a.photos})")
    print(f"{'perturbation':<36}{'judged':>8}{'fooled':>8}{'fooling_rate':>14}{'PSNR':>8}")
    for name, s in rows:
        print(f"{name[:35]:<36}{s['faces_judged']:>8}{s['fooled']:>8}{s['fooling_rate']:>14.3f}{s['psnr_mean']:>8.2f}")
    with open(os.path.join(a.out, "ceiling.json"), "w") as f:
        json.dump({"settings": vars(a), "faces": len(faces), "results": {n: s for n, s in rows}}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
