"""`facepriv train`: crop faces with MTCNN, hold out a seeded validation split, train a
surrogate classifier, save one checkpoint with weights and metadata.

Data layout: DATA_DIR/<identity>/<photo>; the face nearest the image centre is the
identity's face. Faces are cropped with the same geometry the cloak and judge use, a little
looser (TRAIN_SCALE) so training can jitter the crop like a re-detection would.
"""

from __future__ import annotations

import posixpath
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from facepriv.core import geometry
from facepriv.io import imageio
from facepriv.io.archive import Archive, storage_options
from facepriv.errors import FacePrivError
from facepriv.pipeline.faces import FaceDetector
from facepriv.models.checkpoint import save_checkpoint
from facepriv.models.registry import build_model

TRAIN_SCALE = 1.15


@dataclass
class TrainSettings:
    arch: str = "paper-cnn"
    epochs: int = 60  # the crop jitter below needs more than 40 to converge (lfw50: val acc 0.61 vs 0.53)
    batch_size: int = 32
    lr: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0
    pretrained: str | None = None
    freeze_backbone: bool = False
    min_face_size: int = 20
    augment: bool = True
    aug_shift: float = 0.1  # crop-centre jitter, +- this fraction of the crop side (each axis)
    aug_scale: float = 0.15  # crop-size jitter, x (1 +- this)
    device: str = "auto"


def extract_faces(archive: Archive, size: int, scale: float, detector: FaceDetector,
                  progress: bool = True) -> tuple[list[str], list[tuple[str, str, torch.Tensor]], dict]:
    """Return (classes, [(identity, key, uint8 crop 3xSxS)], data summary)."""
    by_id: dict[str, list[str]] = defaultdict(list)
    for key in archive.list_images():
        parts = key.split("/")
        if len(parts) >= 2:
            by_id[parts[-2]].append(key)
    classes = sorted(by_id)
    if len(classes) < 2:
        raise FacePrivError(
            f"{archive.url} needs one sub-folder per identity (at least 2) with photos inside; "
            f"found {len(classes)}"
        )
    keys = [k for c in classes for k in sorted(by_id[c])]
    crops, skipped = [], defaultdict(int)
    bar = tqdm(total=len(keys), desc="cropping faces", unit="photo", disable=not progress, file=sys.stderr)
    for start in range(0, len(keys), 16):
        chunk = keys[start : start + 16]
        decoded = []
        for k in chunk:
            try:
                decoded.append((k, imageio.decode(archive.read_bytes(k)).rgb))
            except FacePrivError:
                skipped["unreadable"] += 1
        dets = detector.detect([rgb for _, rgb in decoded])
        for (k, rgb), d in zip(decoded, dets):
            if len(d) == 0:
                skipped["no_face"] += 1
                continue
            i = geometry.nearest_to_centre(d.boxes, rgb.shape[1], rgb.shape[0])
            img = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)
            crop = geometry.crop_faces(img, d.boxes[i : i + 1], size, scale)[0]
            crops.append((posixpath.basename(posixpath.dirname(k)), k, crop.mul(255).round().byte()))
        bar.update(len(chunk))
    bar.close()
    summary = {"identities": len(classes), "photos": len(keys), "faces": len(crops), "skipped": dict(skipped),
               "source": archive.url}
    return classes, crops, summary


def split(crops, val_fraction: float, seed: int):
    """Per-identity seeded split; an identity with >= 3 faces gives at least one to validation."""
    rng = random.Random(seed)
    by_id = defaultdict(list)
    for c in crops:
        by_id[c[0]].append(c)
    train, val = [], []
    for ident in sorted(by_id):
        items = sorted(by_id[ident], key=lambda c: c[1])
        rng.shuffle(items)
        n_val = int(round(len(items) * val_fraction))
        if val_fraction > 0 and len(items) >= 3:
            n_val = max(n_val, 1)
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def _augment(x: torch.Tensor, size: int, gen: torch.Generator, *, shift: float, scale: float) -> torch.Tensor:
    """Random crop of the loose crop (centre moved by up to +-`shift` of the crop side, side
    scaled by 1 +- `scale`, as re-detection moves a box, and more) + flip, batched with one
    affine grid."""
    n = x.shape[0]
    sc = torch.empty(n).uniform_(1 - scale, 1 + scale, generator=gen) / TRAIN_SCALE
    sh = torch.empty(n, 2).uniform_(-2 * shift, 2 * shift, generator=gen) / TRAIN_SCALE
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sc * flip
    theta[:, 1, 1] = sc
    theta[:, :, 2] = sh  # affine_grid's coordinates span the crop as [-1, 1]: 2 x the fraction
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _centre(x: torch.Tensor, size: int) -> torch.Tensor:
    s = x.shape[-1]
    side = int(round(s / TRAIN_SCALE))
    o = (s - side) // 2
    return F.interpolate(x[:, :, o : o + side, o : o + side], size=(size, size), mode="bilinear",
                         antialias=True, align_corners=False)


@torch.no_grad()
def evaluate(model, x_u8: torch.Tensor, y: torch.Tensor, size: int, device, bs: int = 64) -> tuple[float, float]:
    if len(x_u8) == 0:
        return float("nan"), float("nan")
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x_u8), bs):
        xb = _centre(x_u8[i : i + bs].float().div(255), size).to(device)
        yb = y[i : i + bs].to(device)
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    return loss_sum / len(x_u8), correct / len(x_u8)


def train(data_dir: str, out: str, settings: TrainSettings, s3_endpoint: str | None = None,
          progress: bool = True, log=print, retries: int = 5) -> dict:
    torch.manual_seed(settings.seed)
    device = torch.device("cuda" if settings.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if settings.device == "auto" else settings.device))
    archive = Archive(data_dir, storage_options(data_dir, s3_endpoint, retries), retries)
    model = build_model(settings.arch, num_classes=2, pretrained=None)  # for input_size only
    size = int(model.input_size)
    detector = FaceDetector(device=device)
    loose = int(round(size * TRAIN_SCALE))
    classes, crops, data_summary = extract_faces(archive, loose, TRAIN_SCALE, detector, progress)
    cidx = {c: i for i, c in enumerate(classes)}
    train_set, val_set = split(crops, settings.val_fraction, settings.seed)
    xt = torch.stack([c[2] for c in train_set])
    yt = torch.tensor([cidx[c[0]] for c in train_set])
    xv = torch.stack([c[2] for c in val_set]) if val_set else torch.zeros((0, 3, loose, loose), dtype=torch.uint8)
    yv = torch.tensor([cidx[c[0]] for c in val_set], dtype=torch.long)
    log(f"{len(classes)} identities, {data_summary['photos']} photos, {len(crops)} faces "
        f"(train {len(xt)}, validation {len(xv)}; skipped {data_summary['skipped'] or 'none'})")

    model = build_model(settings.arch, num_classes=len(classes), pretrained=settings.pretrained,
                        freeze_backbone=settings.freeze_backbone).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
    gen = torch.Generator().manual_seed(settings.seed)
    history = []
    t0 = time.time()
    for epoch in range(1, settings.epochs + 1):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(xt), settings.batch_size):
            idx = perm[i : i + settings.batch_size]
            xb = xt[idx].float().div(255)
            if settings.augment:
                xb = _augment(xb, size, gen, shift=settings.aug_shift, scale=settings.aug_scale)
            else:
                xb = _centre(xb, size)
            xb = xb.to(device)
            yb = yt[idx].to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        sched.step()
        model.eval()
        tr_loss, tr_acc = evaluate(model, xt, yt, size, device)
        va_loss, va_acc = evaluate(model, xv, yv, size, device)
        history.append({"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc, "val_loss": va_loss,
                        "val_acc": va_acc})
        log(f"epoch {epoch:3d}/{settings.epochs}  train loss {tr_loss:.4f} acc {tr_acc:.3f}  |  "
            f"validation loss {va_loss:.4f} acc {va_acc:.3f}  ({time.time() - t0:.0f}s)")
    final = history[-1]
    model.eval()
    sha = save_checkpoint(
        out, model, settings.arch, classes,
        input_size=size, data=data_summary, train_acc=final["train_acc"], train_loss=final["train_loss"],
        val_acc=final["val_acc"], val_loss=final["val_loss"], epochs=settings.epochs, seed=settings.seed,
        lr=settings.lr, val_fraction=settings.val_fraction, augment=settings.augment, aug_shift=settings.aug_shift,
        aug_scale=settings.aug_scale, pretrained=settings.pretrained or "",
        train_faces=len(xt), val_faces=len(xv),
    )
    result = {"out": out, "sha256": sha, "classes": len(classes), **{k: final[k] for k in final if k != "epoch"}}
    log(f"saved {out} (sha256 {sha[:12]}): train acc {final['train_acc']:.3f} loss {final['train_loss']:.4f}, "
        f"validation acc {final['val_acc']:.3f} loss {final['val_loss']:.4f}")
    return result
