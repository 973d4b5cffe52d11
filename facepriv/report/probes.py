"""What a report judges: one probe face per photo of a run, matched again in the written file,
and the run's own crafting model (`Surrogate`) re-classifying it the way the pipeline does."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from facepriv.core import geometry
from facepriv.pipeline.faces import DetectorSettings, FaceDetector
from facepriv.report.aggregate import counted, faces_of, folder_identity

MATCH_IOU = 0.3  # the pipeline's rule for "found again in the written file"


@dataclass
class Probe:
    key: str  # source key
    output_key: str
    identity: str | None
    face: dict[str, Any]  # manifest face: box, landmarks (flat 10), label, judged, fooled, preds
    row: dict[str, Any]
    index: int = 0  # of `face` in the row's faces

    @property
    def box(self) -> np.ndarray:
        return np.asarray(self.face["box"], np.float32)

    def face_dict(self) -> dict[str, Any]:
        return face_dict(self.face)


def face_dict(face: dict[str, Any]) -> dict[str, Any]:
    """A manifest face as a judge's face dict (box, landmarks (5, 2))."""
    lm = face.get("landmarks")
    return {"box": np.asarray(face["box"], np.float32),
            "landmarks": None if lm is None else np.asarray(lm, np.float32).reshape(5, 2)}


def probes_of(rows: Sequence[dict[str, Any]], labels: str = "folder") -> list[Probe]:
    """One probe per ok row: its labelled face (labels "folder": the identity is the face's label,
    falling back to the parent folder), else with labels "none" the face nearest the centre."""
    out = []
    for r in counted(rows):
        faces = faces_of(r)
        if r.get("status") != "ok" or not faces:
            continue
        idx = next((i for i, f in enumerate(faces) if f.get("label")), None)
        if idx is None:
            boxes = np.array([f["box"] for f in faces], np.float32)
            idx = geometry.nearest_to_centre(boxes, int(r.get("width") or 0), int(r.get("height") or 0))
        f = faces[idx]
        ident = (f.get("label") or folder_identity(r["source_key"])) if labels == "folder" else None
        out.append(Probe(r["source_key"], r.get("output_key") or r["source_key"], ident, f, r, int(idx)))
    return out


def match(box: np.ndarray, boxes: np.ndarray, min_iou: float = MATCH_IOU) -> int | None:
    """Index of the box in `boxes` with the highest IoU with `box`, if >= min_iou."""
    if len(boxes) == 0:
        return None
    ious = geometry.iou(np.asarray(box, np.float32)[None], boxes)[0]
    j = int(ious.argmax())
    return j if ious[j] >= min_iou else None


def detector_for(rows: Sequence[dict[str, Any]], device: str = "cpu") -> FaceDetector:
    """MTCNN with the run's own detector settings (from settings_json)."""
    s: dict[str, Any] = {}
    for r in rows:
        if r.get("settings_json"):
            s = json.loads(r["settings_json"])
            break
    return FaceDetector(DetectorSettings(int(s.get("min_face_size", 20)), tuple(s.get("thresholds", (0.6, 0.7, 0.7))),
                                         float(s.get("min_prob", 0.9))), device)


class Surrogate:
    """The run's crafting model, re-classifying faces the way the pipeline's judge stage does."""

    def __init__(self, checkpoint: str, device: str = "cpu"):
        from facepriv.models.checkpoint import load_checkpoint

        self.loaded = load_checkpoint(checkpoint, device)
        self.classes = self.loaded.classes
        self.device = torch.device(device)
        self.path = checkpoint

    @torch.no_grad()
    def classify(self, rgb: np.ndarray, boxes: np.ndarray) -> list[str]:
        img = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1).float().div_(255)
        x = geometry.crop_faces(img, np.asarray(boxes, np.float32).reshape(-1, 4), self.loaded.model.input_size)
        return [self.classes[i] for i in self.loaded.model(x).argmax(1).cpu().tolist()]


def surrogate_fooled(face: dict[str, Any], pred: str, target: str | None = None) -> bool:
    """The pipeline's rule on a new prediction for a judged face."""
    if target is not None:
        return pred == target
    if face.get("label"):
        return pred != face["label"]
    return pred != face.get("clean_pred")
