"""The judge stage of the cloak pipeline: the written file read back from DST, decoded,
re-detected and re-classified by the surrogate classifier; `fooled` comes from that, never from
the in-memory tensor. Per face it records the change (linf / l2 on the face region) and the
face-region quality of the file as read back."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import torch

from facepriv.core import geometry
from facepriv.core.metrics import face_quality, linf_l2, psnr, ssim
from facepriv.errors import FacePrivError
from facepriv.io import imageio
from facepriv.pipeline.faces import Detection


class JudgeStage:
    """Mixed into `Cloaker` (facepriv/pipeline/cloaker.py), whose state it reads: settings,
    dst, loaded (the classifier, or None), classes, device, `_redetect` and `_fail`."""

    @torch.no_grad()
    def _classify(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Surrogate predictions for faces of one photo: each square crop is cut from the uint8
        photo first (never a float copy of the whole photo), then resized as `crop_faces` does."""
        h, w = rgb.shape[:2]
        size = self.loaded.model.input_size
        crops = []
        for b in boxes:
            x0, y0, x1, y1 = geometry.int_box(geometry.square_box(b), w, h)
            patch = torch.from_numpy(np.ascontiguousarray(rgb[y0:y1, x0:x1])).to(self.device)
            patch = patch.permute(2, 0, 1).float().div_(255)[None]
            crops.append(geometry.crop_resize(patch, [(0, 0, x1 - x0, y1 - y0)], size))
        prob = torch.softmax(self.loaded.model(torch.cat(crops)), 1)
        conf, pred = prob.max(1)
        return pred.cpu().numpy(), conf.cpu().numpy()

    def _clean(self, p: Any) -> tuple[np.ndarray, np.ndarray]:
        """Predictions on the original faces, computed once per photo."""
        if p.clean is None:
            p.clean = self._classify(p.decoded.rgb, p.det.boxes)
        return p.clean

    def _judge(self, photos: list[Any]) -> None:
        t = time.perf_counter()
        written: list[tuple[Any, np.ndarray]] = []
        reused: dict[int, Detection] = {}
        for p in photos:
            p.faces = []  # _guard may re-run this stage photo by photo
            try:
                data = self.dst.read_bytes(p.key)
                same = p.verified is not None and hashlib.sha256(data).hexdigest() == p.verified.sha256
                # the very bytes the verification decoded and re-detected: the same pixels and
                # detection, so neither runs twice; other bytes are decoded and detected afresh
                rgb = p.verified.rgb if same else imageio.decode(data, max_pixels=2**62).rgb
            except FacePrivError as e:
                self._fail(p, f"written file does not decode: {e}")
                continue
            if rgb.shape != p.decoded.rgb.shape:
                self._fail(p, f"written file has size {rgb.shape[1]}x{rgb.shape[0]}, expected "
                              f"{p.decoded.size[0]}x{p.decoded.size[1]}")
                continue
            if same:
                reused[id(p)] = p.verified.detection
            written.append((p, rgb))
        with_faces = [(p, rgb) for p, rgb in written if p.det is not None and len(p.det)]
        fresh = [(p, rgb) for p, rgb in with_faces if id(p) not in reused]
        found = self._redetect([p for p, _ in fresh], [rgb for _, rgb in fresh]) if fresh else []
        redets = dict(zip([id(p) for p, _ in fresh], found))
        redets.update(reused)
        for p, rgb in with_faces:
            self._judge_faces(p, rgb, redets[id(p)])
        for p, rgb in written:
            p.row["psnr"] = psnr(p.decoded.rgb, rgb)
            p.row["ssim"] = ssim(p.decoded.rgb, rgb)
        dt = time.perf_counter() - t
        for p in photos:
            p.row["t_judge"] = (p.row.get("t_judge") or 0.0) + dt / max(len(photos), 1)

    def _judge_faces(self, p: Any, rgb: np.ndarray, redet: Detection) -> None:
        det = p.det
        match, judge_boxes = match_faces(det, redet)
        has_model = self.loaded is not None
        if has_model:
            cp, cc = self._clean(p)
            ap, ac = self._classify(rgb, judge_boxes)
        h, w = rgb.shape[:2]
        for i in range(len(det)):
            rx0, ry0, rx1, ry1 = geometry.face_region(det.boxes[i], w, h, self.settings.region_margin)
            linf, l2 = linf_l2(p.decoded.rgb[ry0:ry1, rx0:rx1], rgb[ry0:ry1, rx0:rx1])
            q = face_quality(p.decoded.rgb, rgb, det.boxes[i])  # the written file as read back
            face = {
                "box": [float(v) for v in det.boxes[i]], "prob": float(det.probs[i]),
                "landmarks": [float(v) for v in det.landmarks[i].reshape(-1)],
                "label": p.label if p.labelled_face == i else None,
                "redetected": bool(match[i] >= 0), "linf": linf, "l2": l2,
                "steps": p.steps[i] if p.steps else 0, "decoy": p.decoys[i] if p.decoys else None,
                "judged": False, "fooled": None,
                "face_psnr": q["psnr"], "face_ssim": q["ssim"], "face_ssimulacra2": q["ssimulacra2"],
            }
            if has_model:
                clean, cloak = self.classes[cp[i]], self.classes[ap[i]]
                face.update(clean_pred=clean, clean_conf=float(cc[i]), cloaked_pred=cloak, cloaked_conf=float(ac[i]))
                if self.settings.labels == "folder":
                    if face["label"] is not None and face["label"] in self.class_index and clean == face["label"]:
                        face.update(judged=True, fooled=cloak != face["label"])
                elif self.settings.target is not None:
                    face.update(judged=clean != self.settings.target, fooled=cloak == self.settings.target)
                else:
                    face.update(judged=True, fooled=cloak != clean)
            p.faces.append(face)


def match_faces(det: Detection, redet: Detection) -> tuple[np.ndarray, np.ndarray]:
    """Match each original face to the re-detected face with the highest IoU (>= 0.3): the
    match index (-1 if lost) and the box to judge it by (the re-detected one, else the original)."""
    match = np.full(len(det), -1)
    if len(redet):
        ious = geometry.iou(det.boxes, redet.boxes)
        for i in range(len(det)):
            j = int(ious[i].argmax())
            if ious[i, j] >= 0.3:
                match[i] = j
    judge_boxes = np.stack([redet.boxes[m] if m >= 0 else det.boxes[i] for i, m in enumerate(match)])
    return match, judge_boxes
