"""The cloak pipeline for a batch of photos: read, decode, detect, attack, write, judge.

`Cloaker` is a callable class in Ray's batch pattern: the model and detector are loaded once
in `__init__`, and `process(keys)` maps a batch of source keys to manifest rows
(`facepriv.distributed.worker.ShardWorker` is the Ray Data callable around it). It runs the same
in-process (tests, plain loops, benchmarks) and inside Ray Data workers.

Judging is honest: the written file is read back from DST, decoded, re-detected and
re-classified; `fooled` comes from that, never from the in-memory tensor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import socket
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

import numpy as np
import torch

from facepriv.core import geometry
from facepriv.io import imageio
from facepriv.io import manifest
from facepriv.runs import memory
from facepriv.io.archive import Archive, storage_options
from facepriv.core.compose import PhotoCloak
from facepriv.errors import FacePrivError
from facepriv.pipeline.judge import JudgeStage, match_faces
from facepriv.pipeline.faces import Detection, DetectorSettings, FaceDetector
from facepriv.core.settings import CloakSettings, step_plan
from facepriv.models.checkpoint import load_checkpoint
from facepriv.strategies import REGISTRY, FaceItem, make as make_strategy, read_surrogates


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class _Photo:
    key: str
    row: dict[str, Any]
    decoded: imageio.Decoded | None = None
    det: Detection | None = None
    label: str | None = None
    labelled_face: int | None = None
    cloaked: np.ndarray | None = None
    faces: list[dict[str, Any]] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    decoys: list[int | None] = field(default_factory=list)  # per face: the decoy's bank index (embed-pgd)
    verified: _Verified | None = None  # the would-be file, as `_verify` encoded, decoded and re-detected it
    clean: tuple | None = None  # surrogate (pred, conf) on the original faces
    composite: PhotoCloak | None = None  # the faces' changes composed (`_run_strategy`)


class _Verified(NamedTuple):
    data: bytes  # the encoded file `_write` writes
    fmt: str
    sha256: str
    detection: Detection  # its re-detection
    rgb: np.ndarray  # its decoded pixels


class Cloaker(JudgeStage):
    """Load once, cloak many: `process(keys) -> rows`.

    `surrogates`: the attack's surrogate models as the run's driver read them
    (`strategies.read_surrogates`; None: read here). Their weights' sha256 are part of the
    settings hash, so an incremental run re-cloaks when they change."""

    def __init__(self, src: str, dst: str, settings: CloakSettings, run_id: str,
                 s3_endpoint: str | None = None, retries: int = 5, torch_threads: int | None = None,
                 surrogates: list | None = None):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.settings = settings
        self.run_id = run_id
        self.src = Archive(src, storage_options(src, s3_endpoint, retries), retries)
        self.dst = Archive(dst, storage_options(dst, s3_endpoint, retries), retries)
        self.device = resolve_device(settings.device)
        self.detector = FaceDetector(
            DetectorSettings(settings.min_face_size, tuple(settings.thresholds), settings.min_prob), self.device
        )
        self.loaded = load_checkpoint(settings.model, self.device) if settings.model else None
        self.classes = self.loaded.classes if self.loaded else []
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.model_sha = self.loaded.sha256 if self.loaded else None
        surrogates = read_surrogates(settings) if surrogates is None else surrogates
        shas = [w.sha256 for w in surrogates]
        self.settings_hash = settings.hash(self.model_sha, shas)
        self.settings_json = json.dumps(settings.output_fields(self.model_sha, shas), sort_keys=True, default=str)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        if settings.target is not None and settings.target not in self.class_index:
            raise FacePrivError(f"--target {settings.target!r} is not one of the model's classes")
        per_call, self.rounds = step_plan(settings, self._resumable(settings))
        self.strategy = make_strategy(dataclasses.replace(settings, steps=per_call), self.loaded, self.device,
                                      surrogates)

    def _resumable(self, settings: CloakSettings) -> bool:
        """Whether the attack can be re-run on faces from their current cloak (pgd), so the
        verify stage can re-attack them; it needs a classifier to re-classify the would-be file."""
        factory = REGISTRY.get(settings.attack)
        return bool(getattr(factory, "resumable", False)) and self.loaded is not None

    # -- the pipeline ---------------------------------------------------------------------
    def process(self, keys: list[str]) -> list[dict[str, Any]]:
        photos = [self._read(k) for k in keys]
        live = [p for p in photos if p.decoded is not None]
        self._guard(live, self._detect)
        self._guard(live, self._attack)
        self._guard(live, self._write)
        if self.settings.judge:
            self._guard(live, self._judge)
        for p in photos:
            self._finish(p)
        memory.trim()  # peak RSS stays flat over an archive (see facepriv/runs/memory.py)
        return [p.row for p in photos]

    def _guard(self, photos: list[_Photo], stage) -> None:
        """Run a stage over photos; an unexpected failure on one photo becomes its error row."""
        try:
            stage([p for p in photos if p.row["status"] != "error"])
        except Exception:  # noqa: BLE001 - retry one by one to isolate the bad photo
            for p in photos:
                if p.row["status"] == "error":
                    continue
                try:
                    stage([p])
                except FacePrivError as e:
                    self._fail(p, str(e))
                except Exception as e:  # noqa: BLE001
                    self._fail(p, f"internal error in {stage.__name__.strip('_')}: {type(e).__name__}: {e}")
                    traceback.print_exc()

    def _fail(self, p: _Photo, reason: str) -> None:
        p.row.update(status="error", reason=reason, faces=[], n_faces=0, psnr=None, ssim=None)
        p.decoded = None

    def _read(self, key: str) -> _Photo:
        row = manifest.empty_row(
            run_id=self.run_id, source_key=key, output_key=key, status="ok", reason=None,
            attack=self.settings.attack, eps=self.settings.eps,
            steps=self.settings.steps if self.settings.attack not in ("fgsm", "uap") else 1,
            settings_json=self.settings_json, settings_hash=self.settings_hash,
            model=self.settings.model, model_sha256=self.model_sha, worker=self.worker,
        )
        p = _Photo(key, row)
        t = time.perf_counter()
        try:
            data = self.src.read_bytes(key)
            row["size_bytes"] = len(data)
            row["content_sha256"] = hashlib.sha256(data).hexdigest()
            p.decoded = imageio.decode(data, self.settings.max_pixels)
            row.update(format=p.decoded.format, width=p.decoded.size[0], height=p.decoded.size[1])
            if p.decoded.notes:
                row["reason"] = "; ".join(p.decoded.notes)
        except FacePrivError as e:
            self._fail(p, str(e))
        except Exception as e:  # noqa: BLE001
            self._fail(p, f"cannot read: {type(e).__name__}: {e}")
        row["t_read"] = time.perf_counter() - t
        return p

    def _detect(self, photos: list[_Photo]) -> None:
        t = time.perf_counter()
        dets = self.detector.detect([p.decoded.rgb for p in photos]) if photos else []
        t_det = (time.perf_counter() - t) / max(len(photos), 1)
        for p, d in zip(photos, dets):
            p.det = d
            p.row["t_detect"] = t_det
            self._assign_label(p)

    def _assign_label(self, p: _Photo) -> None:
        if self.settings.labels != "folder" or p.det is None or len(p.det) == 0:
            return
        parent = posixpath.basename(posixpath.dirname(p.key))
        if parent:
            p.label = parent
            w, h = p.decoded.size
            p.labelled_face = geometry.nearest_to_centre(p.det.boxes, w, h)

    # -- attack ---------------------------------------------------------------------------
    def _attack(self, photos: list[_Photo]) -> None:
        t = time.perf_counter()
        items: list[FaceItem] = []
        for p in photos:
            p.cloaked = p.decoded.rgb
            p.verified = None
            p.composite = None
            if p.det is None or len(p.det) == 0:
                continue
            p.cloaked = p.decoded.rgb.copy()
            p.steps = [0] * len(p.det)
            p.decoys = [None] * len(p.det)
            items += [self._face_item(p, i, self._target_for(p, i)) for i in range(len(p.det))]
        self._run_strategy(items)
        t_verify = 0.0
        rounds = self.rounds
        if self.settings.judge or rounds:
            todo = [p for p in photos if p.steps]
            for r in range(rounds + 1):
                tv = time.perf_counter()
                again = self._verify(todo, retry=r < rounds)
                t_verify += time.perf_counter() - tv
                if not again:
                    break
                self._run_strategy(again)
                # only photos re-attacked changed; the others' verified bytes and detection stand
                todo = list({id(it.photo): it.photo for it in again}.values())
        dt = time.perf_counter() - t - t_verify
        total_faces = max(len(items), 1)
        for p in photos:
            n = len(p.det) if p.det is not None else 0
            p.row["t_attack"] = dt * n / total_faces
            p.row["t_judge"] = t_verify * n / total_faces  # re-detecting the would-be file is judging

    def _face_item(self, p: _Photo, i: int, target: int | None, crop_box=None) -> FaceItem:
        """Face i of photo p: its region (fixed by the first detection, so the eps ball is too)
        and the square crop the surrogate sees (the first detection's, or `crop_box`)."""
        rgb = p.decoded.rgb
        h, w = rgb.shape[:2]
        box = p.det.boxes[i]
        rx0, ry0, rx1, ry1 = geometry.jpeg_region(box, w, h, self.settings.region_margin)
        cx0, cy0, cx1, cy1 = geometry.int_box(geometry.square_box(box if crop_box is None else crop_box), w, h)
        cx0, cy0 = min(max(cx0, rx0), rx1 - 1), min(max(cy0, ry0), ry1 - 1)
        cx1, cy1 = max(min(cx1, rx1), cx0 + 1), max(min(cy1, ry1), cy0 + 1)
        origin = np.array([rx0, ry0], np.float32)

        def region(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a[ry0:ry1, rx0:rx1]).to(self.device).permute(2, 0, 1).float().div_(255)

        return FaceItem(
            photo=p, index=i, region=(rx0, ry0, rx1, ry1), pixels=region(rgb),
            crop=(cx0 - rx0, cy0 - ry0, cx1 - rx0, cy1 - ry0),
            landmarks=p.det.landmarks[i] - origin, box=box - np.tile(origin, 2), target=target,
            start=region(p.cloaked) if crop_box is not None else None,
        )

    def _run_strategy(self, items: list[FaceItem]) -> None:
        """Attack faces in chunks of face_batch and compose each face's change into its photo
        (`compose.PhotoCloak`: where regions overlap the changes add, clipped to +-eps; a
        face's own crop box holds its own change), then round to uint8, what the file will
        hold. A face's change is its result minus what its attack started from: the original
        pixels, or for a re-attack (`it.start`) the photo's cloak before this call. Strategies
        whose result for a face does not depend on the other faces of its chunk (`per_face`)
        get chunks of similar region sizes, so packing pads little (a chunk is as large as its
        largest region). The first call gets every face of its photos."""
        if getattr(self.strategy, "per_face", False):
            items = sorted(items, key=lambda it: (it.pixels.shape[1], it.pixels.shape[2]))
        by_photo: dict[int, list[FaceItem]] = {}
        for it in items:
            by_photo.setdefault(id(it.photo), []).append(it)
        for faces in by_photo.values():
            p = faces[0].photo
            if p.composite is None:
                first = {it.index: it for it in faces}
                order = [first[i] for i in range(len(p.det))]
                p.composite = PhotoCloak(
                    p.decoded.rgb, [it.region for it in order],
                    [(it.region[0] + it.crop[0], it.region[1] + it.crop[1], it.region[0] + it.crop[2],
                      it.region[1] + it.crop[3]) for it in order], self.settings.eps)
            p.composite.settle()
        # what each attack starts from, taken before any chunk changes the photos
        bases = [it.photo.composite.current(it.index) if it.start is not None else
                 it.photo.composite.original(it.index) for it in items]
        for start in range(0, len(items), self.settings.face_batch):
            chunk = items[start : start + self.settings.face_batch]
            adv, used = self.strategy(chunk)
            decoys = getattr(self.strategy, "last_decoys", None) or [None] * len(chunk)
            for j, it in enumerate(chunk):
                rx0, ry0, rx1, ry1 = it.region
                result = adv[j, :, : ry1 - ry0, : rx1 - rx0].mul(255).permute(1, 2, 0).cpu().numpy()
                comp = it.photo.composite
                comp.add(it.index, result - bases[start + j])
                it.photo.cloaked[ry0:ry1, rx0:rx1] = comp.pixels(it.region)
                it.photo.steps[it.index] += int(used[j])
                it.photo.decoys[it.index] = decoys[j]

    def _verify(self, photos: list[_Photo], retry: bool) -> list[FaceItem]:
        """Encode each cloaked photo as it will be written, decode it, re-detect and re-classify
        its faces (what the judge will do to the written file). The encoded bytes and the
        detection are kept: `_write` writes exactly these bytes and `_judge` reuses the
        detection only if the file it reads back is byte-identical. With `retry`, returns the
        faces the would-be file does not fool, to re-attack from their current cloak through
        the crop the re-detection gives."""
        if not photos:
            return []
        encoded = [imageio.encode(p.cloaked, p.decoded, self.settings.jpeg_quality, self.settings.keep_metadata)
                   for p in photos]
        backs = [imageio.decode(data, max_pixels=2**62).rgb for data, _ in encoded]
        redets = self._redetect(photos, backs)
        again: list[FaceItem] = []
        for p, (data, fmt), back, rd in zip(photos, encoded, backs, redets):
            p.verified = _Verified(data, fmt, hashlib.sha256(data).hexdigest(), rd, back)
            if not retry or self.loaded is None:
                continue
            _, judge_boxes = match_faces(p.det, rd)
            pred, _ = self._classify(back, judge_boxes)
            clean, _ = self._clean(p)
            for i in range(len(p.det)):
                target = self._target_for(p, i)
                if self.settings.target is not None:
                    fooled = pred[i] == target
                else:
                    target = int(clean[i]) if target is None else target
                    fooled = pred[i] != target
                if not fooled:
                    again.append(self._face_item(p, i, target, crop_box=judge_boxes[i]))
        return again

    def _redetect(self, photos: list[_Photo], rgbs: list[np.ndarray]) -> list[Detection]:
        """Detect faces again in written (or would-be written) pixels of photos with known faces:
        by default only in windows around the faces found first (`FaceDetector.detect_near`;
        judging matches only those faces; on 7 of the 8 group photos measured the windows are
        11-51% of the pixels, the crowded selfie is detected whole); `redetect="full"` searches
        the whole photo."""
        if self.settings.redetect == "full":
            return self.detector.detect(rgbs)
        return self.detector.detect_near(rgbs, [p.det.boxes for p in photos])

    def _target_for(self, p: _Photo, i: int) -> int | None:
        """Class to attack: the --target class, else the true label of the labelled face."""
        if self.settings.target is not None:
            return self.class_index[self.settings.target]
        if p.labelled_face == i and p.label in self.class_index:
            return self.class_index[p.label]
        return None

    # -- write ----------------------------------------------------------------------------
    def _write(self, photos: list[_Photo]) -> None:
        for p in photos:
            t = time.perf_counter()
            if p.verified is not None:  # the bytes the verification re-detected
                data, fmt = p.verified.data, p.verified.fmt
            else:
                data, fmt = imageio.encode(p.cloaked, p.decoded, self.settings.jpeg_quality,
                                           self.settings.keep_metadata)
            self.dst.write_bytes(p.key, data)
            p.row["output_format"] = fmt
            if p.det is None or len(p.det) == 0:
                p.row["status"] = "no_face"
            p.row["t_write"] = time.perf_counter() - t

    def _finish(self, p: _Photo) -> None:
        r = p.row
        if r["status"] != "error":
            if p.faces:
                r["faces"] = p.faces
            elif p.det is not None and len(p.det) and not self.settings.judge:
                r["faces"] = [
                    {"box": [float(v) for v in p.det.boxes[i]], "prob": float(p.det.probs[i]),
                     "landmarks": [float(v) for v in p.det.landmarks[i].reshape(-1)],
                     "label": p.label if p.labelled_face == i else None,
                     "steps": p.steps[i] if p.steps else 0, "decoy": p.decoys[i] if p.decoys else None}
                    for i in range(len(p.det))
                ]
            r["n_faces"] = len(r["faces"])
        r["t_total"] = sum(r.get(k) or 0.0 for k in ("t_read", "t_detect", "t_attack", "t_write", "t_judge"))
        r["finished_at"] = datetime.now(timezone.utc)
