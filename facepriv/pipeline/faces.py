"""Face detection with facenet-pytorch's MTCNN: boxes, probabilities and 5 landmarks.

Photos of equal size are detected in one batched call; others one at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from facepriv.core.geometry import search_windows


@dataclass
class Detection:
    boxes: np.ndarray  # (n, 4) float32 x0, y0, x1, y1 in pixels
    probs: np.ndarray  # (n,) float32
    landmarks: np.ndarray  # (n, 5, 2) float32: left eye, right eye, nose, mouth left, mouth right

    @classmethod
    def empty(cls) -> "Detection":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class DetectorSettings:
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    min_prob: float = 0.9


class FaceDetector:
    """MTCNN loaded once; `detect(list of HxWx3 uint8 arrays) -> list[Detection]`."""

    def __init__(self, settings: DetectorSettings | None = None, device: str | torch.device = "cpu"):
        from facenet_pytorch import MTCNN

        self.settings = settings or DetectorSettings()
        self.mtcnn = MTCNN(
            keep_all=True,
            min_face_size=self.settings.min_face_size,
            thresholds=list(self.settings.thresholds),
            device=device,
            post_process=False,
        )
        # channels-last weights: oneDNN's convolutions and max pooling run ~1.7x faster on CPU
        # for MTCNN's small-channel layers, with the same boxes (to ~1e-5 px)
        for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
            net.to(memory_format=torch.channels_last)

    def detect(self, images: Sequence[np.ndarray]) -> list[Detection]:
        out: list[Detection | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, im in enumerate(images):
            if min(im.shape[:2]) < self.settings.min_face_size:
                continue  # no face of min_face_size fits (and MTCNN's pyramid would be empty)
            groups[im.shape[:2]].append(i)
        for idx in groups.values():
            for chunk in _chunks(idx, 16):
                pils = [Image.fromarray(images[i]) for i in chunk]
                batch = pils if len(pils) > 1 else pils[0]
                with torch.no_grad():
                    boxes, probs, lms = self.mtcnn.detect(batch, landmarks=True)
                if len(pils) == 1:
                    boxes, probs, lms = [boxes], [probs], [lms]
                for j, i in enumerate(chunk):
                    out[i] = self._to_detection(boxes[j], probs[j], lms[j])
        return [d if d is not None else Detection.empty() for d in out]

    def detect_near(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                    margin: float = 0.5) -> list[Detection]:
        """Find known faces again (e.g. in a cloaked file), looking only near them: MTCNN's first
        stage (P-Net, the cost that grows with the photo) runs only on windows around each
        image's `boxes` (`geometry.search_windows`), cut from the same image pyramid `detect`
        builds, at even offsets so each P-Net output is the one the whole photo gives there;
        the later stages are MTCNN's own on the whole photo. So a face inside a window is found
        as `detect` finds it (boxes equal to float rounding); faces elsewhere are not looked
        for. Images without boxes, or whose windows would cover most of them, are detected whole."""
        out: list[Detection | None] = [None] * len(images)
        whole: list[int] = []
        for i, (im, b) in enumerate(zip(images, boxes)):
            h, w = im.shape[:2]
            wins = search_windows(b, w, h, margin, min_side=2 * self.settings.min_face_size) if len(b) else []
            if not wins or wins == [(0, 0, w, h)] or min(h, w) < self.settings.min_face_size:
                whole.append(i)
                continue
            with torch.no_grad():
                box, pts = _detect_face_in_windows(im, wins, self.mtcnn)
            order = np.argsort((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))[::-1]  # as MTCNN: largest first
            out[i] = self._to_detection(box[order, :4], box[order, 4], pts[order])
        for i, d in zip(whole, self.detect([images[i] for i in whole]) if whole else []):
            out[i] = d
        return [d if d is not None else Detection.empty() for d in out]

    def _to_detection(self, boxes, probs, lms) -> Detection:
        if boxes is None or len(boxes) == 0:
            return Detection.empty()
        b = np.asarray(boxes).astype(np.float32).reshape(-1, 4)
        p = np.asarray(probs).astype(np.float32).reshape(-1)
        lm = np.asarray(lms).astype(np.float32).reshape(-1, 5, 2)
        keep = p >= self.settings.min_prob
        return Detection(b[keep], p[keep], lm[keep])


def _chunks(seq: list[int], n: int):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _detect_face_in_windows(image: np.ndarray, windows: Sequence[tuple[int, int, int, int]], mtcnn):
    """facenet-pytorch's `detect_face` for one HxWx3 uint8 image, with the first stage run only
    inside `windows` (x0, y0, x1, y1); returns (boxes with score (n, 5), landmarks (n, 5, 2)) as
    numpy arrays in image coordinates. Each pyramid level is the whole image resized as
    `detect_face` resizes it; a window's slice of it starts at even coordinates (P-Net has
    stride 2) and so gives the P-Net outputs of the whole image at those positions."""
    from facenet_pytorch.models.utils.detect_face import (
        batched_nms, batched_nms_numpy, bbreg, fixed_batch_process, imresample, pad, rerec)

    dev = next(mtcnn.pnet.parameters()).device
    imgs = torch.from_numpy(np.array(image, np.uint8)).to(dev)[None].permute(0, 3, 1, 2).float()
    h, w = imgs.shape[2:4]
    t1, t2, t3 = mtcnn.thresholds
    m = 12.0 / mtcnn.min_face_size
    scales, scale, minl = [], m, min(h, w) * m
    while minl >= 12:  # detect_face's pyramid, multiplied out the same way (the same floats)
        scales.append(scale)
        scale *= mtcnn.factor
        minl *= mtcnn.factor
    found = []
    for scale in scales:
        level = imresample(imgs, (int(h * scale + 1), int(w * scale + 1)))
        level = (level - 127.5) * 0.0078125
        sh, sw = level.shape[2:4]
        cands = []
        for x0, y0, x1, y1 in windows:
            sx0, sy0 = int(x0 * scale) // 2 * 2, int(y0 * scale) // 2 * 2
            sx1, sy1 = min(sw, int(np.ceil(x1 * scale)) + 1), min(sh, int(np.ceil(y1 * scale)) + 1)
            if sx1 - sx0 < 12 or sy1 - sy0 < 12:
                continue
            reg, probs = mtcnn.pnet(level[:, :, sy0:sy1, sx0:sx1])
            # generateBoundingBox, with output positions shifted to the whole level's
            mask = probs[0, 1] >= t1
            pos = mask.nonzero()
            if len(pos) == 0:
                continue
            bb = (pos + torch.tensor([sy0 // 2, sx0 // 2], device=dev)).to(reg.dtype).flip(1)
            q1 = ((2 * bb + 1) / scale).floor()
            q2 = ((2 * bb + 12) / scale).floor()
            cands.append(torch.cat([q1, q2, probs[0, 1][mask][:, None], reg[0][:, mask].T], 1))
        if cands:
            c = torch.cat(cands)
            pick = batched_nms(c[:, :4], c[:, 4], torch.zeros(len(c), dtype=torch.long, device=dev), 0.5)
            found.append(c[pick])
    empty = (np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))
    if not found:
        return empty
    boxes = torch.cat(found)
    inds = torch.zeros(len(boxes), dtype=torch.long, device=dev)
    boxes = boxes[batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)]
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                         boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]], 1)
    boxes = rerec(boxes)

    def crops(bx: torch.Tensor, size: int) -> torch.Tensor:
        y, ey, x, ex = pad(bx, w, h)
        ims = [imresample(imgs[:, :, y[k] - 1 : ey[k], x[k] - 1 : ex[k]], (size, size))
               for k in range(len(y)) if ey[k] > y[k] - 1 and ex[k] > x[k] - 1]
        return (torch.cat(ims) - 127.5) * 0.0078125 if ims else None

    # second stage (R-Net) and third (O-Net), as detect_face does them
    data = crops(boxes, 24)
    if data is None or len(data) != len(boxes):  # degenerate boxes (detect_face would fail on them too)
        return empty
    out = fixed_batch_process(data, mtcnn.rnet)
    score = out[1][:, 1]
    ok = score > t2
    boxes = torch.cat([boxes[ok, :4], score[ok, None]], 1)
    mv = out[0][ok]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], torch.zeros(len(boxes), dtype=torch.long, device=dev), 0.7)
    boxes, mv = boxes[pick], mv[pick]
    if len(boxes) == 0:
        return empty
    boxes = rerec(bbreg(boxes, mv))
    data = crops(boxes, 48)
    if data is None or len(data) != len(boxes):
        return empty
    out = fixed_batch_process(data, mtcnn.onet)
    score = out[2][:, 1]
    ok = score > t3
    points = out[1][ok].T
    boxes = torch.cat([boxes[ok, :4], score[ok, None]], 1)
    mv = out[0][ok]
    wi, hi = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    px = wi.repeat(5, 1) * points[:5, :] + boxes[:, 0].repeat(5, 1) - 1
    py = hi.repeat(5, 1) * points[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
    points = torch.stack((px, py)).permute(2, 1, 0)
    boxes = bbreg(boxes, mv)
    pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], torch.zeros(len(boxes), dtype=torch.long, device=dev), 0.7, "Min")
    return boxes[pick].cpu().numpy().astype(np.float32), points[pick].cpu().numpy().astype(np.float32)
