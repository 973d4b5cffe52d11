"""What a report reads off the files, a batch of probes at a time: the written file re-read and
re-detected, each judge's embeddings of the clean and the cloaked face, and the same after each
robustness transform, plus the run's own classifier's prediction there.

`Task` is one probe as plain data (it travels to Ray workers); `Measurer` holds what is loaded
once - MTCNN, the judges, the run's classifier - and `measure(tasks)` returns one `Measure` per
task. Detection is batched over the batch's images (one MTCNN call for the written files, one
per transform), each image's faces are embedded in one call per judge. The arithmetic over the
embeddings (identification, verification, rates) stays in `facepriv.report.evaluate`, so the
same measures can be cached (`facepriv.report.cache`) and judged again for free.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facepriv.io import imageio
from facepriv.report import robustness
from facepriv.report.probes import match, surrogate_fooled

@dataclass
class Task:
    key: str  # source key
    output_key: str
    faces: list[dict[str, Any]]  # every manifest face of the photo: {"box": [4], "landmarks": [[2]*5] | None}
    index: int  # the probe face
    wanted: dict[str, list[int]]  # judge name -> face indices to embed (all faces for self-verification)
    clean_needed: dict[str, list[int]]  # judge name -> face indices whose clean embedding is wanted
    judged: bool = False  # the run's classifier judged this face (robustness fooling rate)
    face: dict[str, Any] = field(default_factory=dict)  # label, clean_pred (surrogate_fooled's rule)


@dataclass
class Measure:
    key: str
    error: str | None = None  # the written file could not be read
    clean_error: str | None = None  # the original could not be read
    redetected: bool = False
    clean: dict[str, dict[int, np.ndarray | None]] = field(default_factory=dict)
    cloak: dict[str, dict[int, np.ndarray | None]] = field(default_factory=dict)
    trans: dict[str, dict[str, dict[int, np.ndarray | None]]] = field(default_factory=dict)
    trans_redetected: dict[str, bool] = field(default_factory=dict)
    trans_pred: dict[str, str] = field(default_factory=dict)  # the run's classifier, judged faces only
    trans_fooled: dict[str, bool] = field(default_factory=dict)

    # -- bytes (the report cache; no pickle) ------------------------------------------------
    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        missing: list[str] = []

        def put(name: str, e: np.ndarray | None) -> None:
            if e is None:
                missing.append(name)
            else:
                arrays[name] = np.asarray(e, np.float32)

        for stage, per in (("clean", self.clean), ("cloak", self.cloak)):
            for n, d in per.items():
                for i, e in d.items():
                    put(f"{stage}|{n}|{i}", e)
        for t, per in self.trans.items():
            for n, d in per.items():
                for i, e in d.items():
                    put(f"trans:{t}|{n}|{i}", e)
        meta = {"key": self.key, "error": self.error, "clean_error": self.clean_error, "redetected": self.redetected,
                "trans_redetected": self.trans_redetected, "trans_pred": self.trans_pred,
                "trans_fooled": self.trans_fooled, "missing": missing}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Measure":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            arrays = {k: z[k] for k in z.files if k != "meta"}
        m = cls(meta["key"], meta["error"], meta["clean_error"], bool(meta["redetected"]),
                trans_redetected=dict(meta["trans_redetected"]), trans_pred=dict(meta["trans_pred"]),
                trans_fooled=dict(meta["trans_fooled"]))
        for name, e in [*arrays.items(), *((k, None) for k in meta["missing"])]:
            stage, n, i = name.split("|")
            if stage.startswith("trans:"):
                m.trans.setdefault(stage[6:], {}).setdefault(n, {})[int(i)] = e
            else:
                getattr(m, stage).setdefault(n, {})[int(i)] = e
        return m


def face_list(faces: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain (list) face dicts -> the judges' face dicts (box (4,), landmarks (5, 2) float32)."""
    return [{"box": np.asarray(f["box"], np.float32),
             "landmarks": None if f.get("landmarks") is None else np.asarray(f["landmarks"], np.float32).reshape(5, 2)}
            for f in faces]


class Measurer:
    """Loaded once (per worker); `measure(tasks) -> [Measure]` in order.

    `src` / `dst`: `facepriv.io.archive.Archive`s (src None: no clean embeddings); `judges`:
    objects with the `facepriv.judges.Judge` interface; `detector`: a `FaceDetector`;
    `surrogate`: the run's classifier (`probes.Surrogate`) or None; `target`: the run's target."""

    def __init__(self, src, dst, judges: Sequence[Any], detector, transforms: Sequence[str] = (),
                 surrogate=None, target: str | None = None):
        self.src, self.dst = src, dst
        self.judges = list(judges)
        self.detector = detector
        self.transforms = list(transforms)
        self.surrogate = surrogate
        self.target = target

    def measure(self, tasks: Sequence[Task]) -> list[Measure]:
        out = [Measure(t.key) for t in tasks]
        backs: dict[int, np.ndarray] = {}
        for k, t in enumerate(tasks):
            try:
                backs[k] = imageio.decode(self.dst.read_bytes(t.output_key), max_pixels=2**62).rgb
            except Exception as e:  # noqa: BLE001 - one missing output is one note, not a crash
                out[k].error = f"{t.output_key}: cannot read the cloaked file ({type(e).__name__}: {e})"
        order = sorted(backs)
        fds = {k: face_list(tasks[k].faces) for k in order}
        found = dict(zip(order, self._found_many([backs[k] for k in order], [fds[k] for k in order])))
        for k in order:
            t, m = tasks[k], out[k]
            m.redetected = found[k][t.index] is not None
            self._clean(t, m, fds[k])
            for jd in self.judges:
                idx = t.wanted.get(jd.name, [])
                m.cloak[jd.name] = dict(zip(idx, embed_many(jd, backs[k], [found[k][i] for i in idx])))
        for tr in self.transforms:
            moved = {k: robustness.apply(tr, backs[k], fds[k]) for k in order}
            found_t = dict(zip(order, self._found_many([moved[k][0] for k in order], [moved[k][1] for k in order])))
            for k in order:
                t, m = tasks[k], out[k]
                rgb_t, scaled = moved[k]
                faces_t = found_t[k]
                face_t = faces_t[t.index]
                if self.surrogate is not None and t.judged:
                    box_t = face_t["box"] if face_t is not None else scaled[t.index]["box"]
                    pred = self.surrogate.classify(rgb_t, np.asarray(box_t)[None])[0]
                    m.trans_pred[tr] = pred
                    m.trans_fooled[tr] = bool(surrogate_fooled(t.face, pred, self.target))
                m.trans_redetected[tr] = face_t is not None
                per = m.trans.setdefault(tr, {})
                for jd in self.judges:
                    idx = t.wanted.get(jd.name, [])
                    per[jd.name] = dict(zip(idx, embed_many(jd, rgb_t, [faces_t[i] for i in idx])))
        return out

    def _clean(self, t: Task, m: Measure, fds: list[dict[str, Any]]) -> None:
        if not any(t.clean_needed.values()):
            return
        try:
            if self.src is None:
                raise FileNotFoundError("no SRC")
            rgb = imageio.decode(self.src.read_bytes(t.key), max_pixels=2**62).rgb
        except Exception as e:  # noqa: BLE001
            m.clean_error = f"{t.key}: cannot read the original ({type(e).__name__}: {e})"
            rgb = None
        for jd in self.judges:
            idx = t.clean_needed.get(jd.name, [])
            if idx:
                embs = embed_many(jd, rgb, [fds[i] for i in idx]) if rgb is not None else [None] * len(idx)
                m.clean[jd.name] = dict(zip(idx, embs))

    def _found_many(self, images: list[np.ndarray], faces: list[list[dict[str, Any]]]) -> list[list]:
        dets = self.detector.detect(images) if images else []
        return [found(f, d) for f, d in zip(faces, dets)]


def found(faces: Sequence[dict[str, Any]], det: Any) -> list[dict[str, Any] | None]:
    """For each face (box), the detection in `det` that matches it (box, landmarks), or None."""
    out = []
    for f in faces:
        j = match(f["box"], det.boxes)
        out.append(None if j is None else {"box": det.boxes[j], "landmarks": det.landmarks[j]})
    return out


def embed_many(judge: Any, rgb: np.ndarray, faces: Sequence[dict[str, Any] | None]) -> list[np.ndarray | None]:
    """Embed the faces of one image in one call (None entries stay None); one face the judge
    cannot embed (ValueError, e.g. an empty box after scaling) falls back to one call per face."""
    present = [k for k, f in enumerate(faces) if f is not None]
    out: list[np.ndarray | None] = [None] * len(faces)
    if not present:
        return out
    try:
        e = np.asarray(judge.embed(rgb, [faces[k] for k in present]))
        for k, row in zip(present, e):
            out[k] = row
    except ValueError:
        for k in present:
            out[k] = _embed(judge, rgb, faces[k])  # type: ignore[arg-type]
    return out


def _embed(judge: Any, rgb: np.ndarray, face: dict[str, Any]) -> np.ndarray | None:
    try:
        e = np.asarray(judge.embed(rgb, [face]))
    except ValueError:  # e.g. an empty box after scaling
        return None
    return e[0] if len(e) else None


AUTO_RAY_FACES = 48  # workers=None: fewer faces (or gallery photos) than this are handled in this process


def ray_workers(requested: int | None, n: int) -> int:
    """How many Ray workers measure (or enrol) `n` items: `requested`, or with None (auto) one per
    CPU when there are at least `AUTO_RAY_FACES` items, else 0 (in this process)."""
    if requested is None:
        return (os.cpu_count() or 1) if n >= AUTO_RAY_FACES else 0
    return int(requested)


@dataclass
class WorkerSpec:
    """Everything a worker needs to build its `Measurer`; plain data."""

    src: str | None
    dst: str
    judge_specs: list[str]
    transforms: list[str]
    detector: dict[str, Any]  # DetectorSettings fields
    surrogate: str | None = None  # the run's classifier checkpoint (robustness fooling rate)
    target: str | None = None
    device: str = "cpu"
    s3_endpoint: str | None = None
    retries: int = 5
    torch_threads: int | None = None


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


@dataclass
class EnrolSpec:
    """Everything a worker needs to enrol gallery photos (`Enroller`); plain data."""

    gallery: str  # the --gallery root URL the photos' paths are under
    judge_specs: list[str]
    device: str = "cpu"
    s3_endpoint: str | None = None
    retries: int = 5
    torch_threads: int | None = None


class Enroller:
    """Loaded once (per worker): MTCNN and the judges, built from their specs;
    `enrol(photos)` -> `facepriv.judges.enrol_photos` results, in order."""

    def __init__(self, spec: EnrolSpec):
        import fsspec

        from facepriv.io.archive import storage_options
        from facepriv.judges import get_judge
        from facepriv.pipeline.faces import FaceDetector

        _threads(spec.torch_threads)
        self.fs, _ = fsspec.core.url_to_fs(spec.gallery, **storage_options(spec.gallery, spec.s3_endpoint,
                                                                              spec.retries))
        self.judges = [get_judge(s) for s in spec.judge_specs]
        self.detector = FaceDetector(device=spec.device)

    def enrol(self, photos: Sequence[tuple[str, str, str]]) -> list:
        from facepriv.judges import enrol_photos

        return enrol_photos(self.fs.cat_file, photos, self.judges, self.detector)


def build_measurer(spec: WorkerSpec):
    from facepriv.io.archive import Archive, storage_options
    from facepriv.judges import get_judge
    from facepriv.pipeline.faces import DetectorSettings, FaceDetector
    from facepriv.report.measure import Measurer
    from facepriv.report.probes import Surrogate

    _threads(spec.torch_threads)

    def arch(url):
        return Archive(url, storage_options(url, spec.s3_endpoint, spec.retries), spec.retries)

    d = spec.detector
    det = FaceDetector(DetectorSettings(int(d["min_face_size"]), tuple(d["thresholds"]), float(d["min_prob"])),
                       spec.device)
    sur = None
    if spec.surrogate and spec.transforms:
        try:
            sur = Surrogate(spec.surrogate, spec.device)
        except Exception:  # noqa: BLE001 - the driver notes it (it tried to load it first)
            sur = None
    return Measurer(arch(spec.src) if spec.src else None, arch(spec.dst), [get_judge(s) for s in spec.judge_specs],
                    det, spec.transforms, sur, spec.target)
