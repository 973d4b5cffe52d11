"""The judge interface and the pure arithmetic over embeddings.

A *judge* is a face recogniser that only ever looks at finished photos: numpy in, numpy out,
no gradients, never a crafting model. It embeds the faces it is given (detection is shared:
boxes and 5 landmarks come from MTCNN, `facepriv.pipeline.faces`), and recognition is rank-1 nearest
neighbour in a `Gallery` of enrolled embeddings under the judge's metric and threshold.

Face dicts: ``{"box": (x0, y0, x1, y1), "landmarks": (5, 2) array}`` in pixels of the image
they are passed with (extra keys such as "prob" are ignored).

Decision rule used everywhere here: a face is *recognised* as identity T when its rank-1
gallery identity is T and its distance is <= the threshold. A protected face is one that is
not recognised.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

METRICS = ("euclidean", "cosine")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm")

Face = dict[str, Any]


@runtime_checkable
class Judge(Protocol):
    """What every judge provides. `embed` returns one row per face, in order, float32.

    `metric` is "euclidean" or "cosine" (cosine distance = 1 - cos similarity);
    `threshold`: distances above it mean "unknown person".
    """

    name: str
    metric: str
    threshold: float

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray: ...


# --------------------------------------------------------------------------- faces


def faces_from_detection(det: Any) -> list[Face]:
    """`facepriv.pipeline.faces.Detection` (boxes, probs, landmarks arrays) -> list of face dicts."""
    out = []
    for i in range(len(det.boxes)):
        f: Face = {"box": np.asarray(det.boxes[i], np.float32), "landmarks": np.asarray(det.landmarks[i], np.float32)}
        if getattr(det, "probs", None) is not None and len(det.probs) > i:
            f["prob"] = float(det.probs[i])
        out.append(f)
    return out


def central_face(faces: Sequence[Face], shape: Sequence[int]) -> int | None:
    """Index of the face whose box centre is nearest the image centre (None if no faces).

    `shape` is the image's (H, W, ...) shape.
    """
    if not faces:
        return None
    h, w = shape[0], shape[1]
    boxes = np.array([np.asarray(f["box"], np.float64)[:4] for f in faces])
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 - w / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 - h / 2
    return int(np.argmin(cx * cx + cy * cy))


def check_image(image: np.ndarray) -> np.ndarray:
    """A C-contiguous (H, W, 3) uint8 array, or ValueError."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"judges take (H, W, 3) uint8 RGB arrays, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


# --------------------------------------------------------------------------- distances


def pairwise_distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """(n, D) x (m, D) -> (n, m) distances. cosine distance = 1 - cos similarity."""
    a = np.atleast_2d(np.asarray(a, np.float64))
    b = np.atleast_2d(np.asarray(b, np.float64))
    if metric == "euclidean":
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.sqrt(np.maximum(d2, 0.0))
    if metric == "cosine":
        an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return 1.0 - an @ bn.T
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


# --------------------------------------------------------------------------- gallery


@dataclass
class Gallery:
    """Enrolled embeddings per identity, with the metric and threshold to compare them by.

    `sources[identity]` lists where each embedding came from (file key), same order.
    `skipped` lists (source, reason) for photos that gave no embedding.
    """

    metric: str = "euclidean"
    threshold: float = 0.6
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    judge: str = ""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose one of {METRICS}")
        self.embeddings = {k: np.atleast_2d(np.asarray(v, np.float32)) for k, v in self.embeddings.items()}
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def for_judge(cls, judge: Judge, embeddings: dict[str, np.ndarray] | None = None) -> "Gallery":
        return cls(metric=judge.metric, threshold=float(judge.threshold), embeddings=dict(embeddings or {}),
                   judge=getattr(judge, "name", ""))

    @property
    def identities(self) -> list[str]:
        return sorted(self.embeddings)

    def __len__(self) -> int:
        return sum(len(v) for v in self.embeddings.values())

    def __contains__(self, identity: object) -> bool:
        return identity in self.embeddings

    def add(self, identity: str, emb: np.ndarray, source: str = "") -> None:
        e = np.atleast_2d(np.asarray(emb, np.float32))
        old = self.embeddings.get(identity)
        self.embeddings[identity] = e if old is None else np.concatenate([old, e])
        self.sources.setdefault(identity, []).extend([source] * len(e))
        self._cache = None

    def with_identity(self, identity: str, emb: np.ndarray, sources: list[str] | None = None) -> "Gallery":
        """A copy in which `identity`'s enrolment is replaced (e.g. by cloaked photos, for poisoning)."""
        g = Gallery(self.metric, self.threshold, dict(self.embeddings), {k: list(v) for k, v in self.sources.items()},
                    list(self.skipped), self.judge)
        g.embeddings[identity] = np.atleast_2d(np.asarray(emb, np.float32))
        g.sources[identity] = list(sources) if sources is not None else [""] * len(g.embeddings[identity])
        return g

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(all embeddings (N, D), identity label per row (N,) object array)."""
        if self._cache is None:
            ids = self.identities
            if not ids:
                self._cache = (np.zeros((0, 0), np.float32), np.array([], dtype=object))
            else:
                mat = np.concatenate([self.embeddings[i] for i in ids])
                lab = np.array([i for i in ids for _ in range(len(self.embeddings[i]))], dtype=object)
                self._cache = (mat, lab)
        return self._cache

    @classmethod
    def from_folder(
        cls,
        root: str,
        judge: Judge,
        detector: Any = None,
        select: Callable[[list[str]], list[str]] | None = None,
        storage_options: dict | None = None,
    ) -> "Gallery":
        """Enrol ROOT/<identity>/<photo> (local path or fsspec URL such as s3://...).

        One face per photo: the detected face nearest the image centre. `detector` has
        `detect(list of RGB arrays) -> list[Detection]` (default: `facepriv.pipeline.faces.FaceDetector()`).
        `select(sorted file names of one identity) -> the ones to use` (e.g. ``lambda f: f[:10]``).
        Photos without a face or that cannot be decoded are listed in `skipped`.
        """
        return galleries_from_folder(root, [judge], detector, select, storage_options)[judge.name]


def gallery_photos(root: str, select: Callable[[list[str]], list[str]] | None = None,
                   storage_options: dict | None = None) -> tuple[Any, list[tuple[str, str, str]]]:
    """The photos of ROOT/<identity>/<photo>: (fsspec filesystem, [(identity, key, path)]) in
    sorted order; `select` picks each identity's photos from its sorted file names."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    if not fs.isdir(base):
        raise FileNotFoundError(f"gallery folder {root!r} not found (expected ROOT/<identity>/<photos>)")

    def kind(e: dict) -> str:  # a local symlink is listed as "other": follow it
        if e["type"] == "other":
            return "directory" if fs.isdir(e["name"]) else "file" if fs.isfile(e["name"]) else "other"
        return e["type"]

    todo: list[tuple[str, str, str]] = []  # identity, key, path
    for entry in sorted(fs.ls(base, detail=True), key=lambda e: e["name"]):
        if kind(entry) != "directory":
            continue
        identity = posixpath.basename(entry["name"].rstrip("/"))
        if identity.startswith((".", "_")):
            continue
        files = sorted(
            posixpath.basename(e["name"])
            for e in fs.ls(entry["name"], detail=True)
            if kind(e) == "file" and e["name"].lower().endswith(IMAGE_EXTS)
        )
        if select is not None:
            files = list(select(files))
        todo += [(identity, f"{identity}/{name}", posixpath.join(entry["name"], name)) for name in files]
    return fs, todo


EnrolResult = tuple[str, str, "dict[str, np.ndarray] | None", str]  # identity, key, {judge: (D,)} | None, why


def enrol_photos(read: Callable[[str], bytes], photos: Sequence[tuple[str, str, str]], judges: Sequence[Judge],
                 detector: Any) -> list[EnrolResult]:
    """Enrol a batch of gallery photos: each decoded and detected once (one detector call for
    the batch), its central face embedded by every judge. One result per photo, in order; a
    photo that cannot be read or shows no face gives None and the reason."""
    from facepriv.io.imageio import decode

    out: list[EnrolResult | None] = [None] * len(photos)
    ok, rgbs = [], []
    for k, (identity, key, path) in enumerate(photos):
        try:
            rgbs.append(decode(read(path)).rgb)
        except Exception as e:  # noqa: BLE001 - recorded, one bad photo must not stop enrolment
            out[k] = (identity, key, None, f"cannot decode: {e}")
            continue
        ok.append(k)
    for k, rgb, det in zip(ok, rgbs, detector.detect(rgbs) if rgbs else []):
        identity, key, _ = photos[k]
        faces = faces_from_detection(det)
        c = central_face(faces, rgb.shape)
        if c is None:
            out[k] = (identity, key, None, "no face detected")
            continue
        out[k] = (identity, key, {j.name: np.asarray(j.embed(rgb, [faces[c]]), np.float32)[0] for j in judges}, "")
    return out  # type: ignore[return-value]


def galleries_of(judges: Sequence[Judge], results: Iterable[EnrolResult]) -> dict[str, Gallery]:
    """Each judge's `Gallery` from `enrol_photos` results (in listing order)."""
    out = {j.name: Gallery.for_judge(j) for j in judges}
    for identity, key, embs, why in results:
        for j in judges:
            if embs is None:
                out[j.name].skipped.append((key, why))
            else:
                out[j.name].add(identity, embs[j.name], key)
    return out


def galleries_from_folder(root: str, judges: Sequence[Judge], detector: Any = None,
                          select: Callable[[list[str]], list[str]] | None = None,
                          storage_options: dict | None = None, batch: int = 8,
                          progress: Callable[[int], None] | None = None) -> dict[str, Gallery]:
    """`Gallery.from_folder` for several judges at once, in this process: each photo is decoded
    and detected once (in batches of `batch`), and its central face embedded by every judge."""
    fs, todo = gallery_photos(root, select, storage_options)
    return galleries_of(judges, enrol_batches(fs.cat_file, todo, judges, detector, batch, progress))


def enrol_batches(read: Callable[[str], bytes], photos: Sequence[tuple[str, str, str]], judges: Sequence[Judge],
                  detector: Any = None, batch: int = 8,
                  progress: Callable[[int], None] | None = None) -> list[EnrolResult]:
    """`enrol_photos` over all `photos`, `batch` at a time, in this process (`detector` default:
    `facepriv.pipeline.faces.FaceDetector()`); `progress(n)` after each batch."""
    if detector is None:
        from facepriv.pipeline.faces import FaceDetector

        detector = FaceDetector()
    results: list[EnrolResult] = []
    for i in range(0, len(photos), max(1, batch)):
        results += enrol_photos(read, photos[i: i + batch], judges, detector)
        if progress is not None:
            progress(len(photos[i: i + batch]))
    return results


def embed_central(judge: Judge, detector: Any, rgb: np.ndarray) -> np.ndarray | None:
    """Detect, keep the face nearest the centre, embed it: (D,) or None when no face."""
    faces = faces_from_detection(detector.detect([rgb])[0])
    i = central_face(faces, rgb.shape)
    if i is None:
        return None
    return np.asarray(judge.embed(rgb, [faces[i]]))[0]


# --------------------------------------------------------------------------- decisions


def identify(gallery: Gallery, probe_emb: np.ndarray) -> tuple[str | None, float]:
    """Rank-1 nearest neighbour: (identity, distance); (None, inf) for an empty gallery."""
    ids, dists = identify_many(gallery, np.atleast_2d(probe_emb))
    return ids[0], float(dists[0])


def identify_many(gallery: Gallery, probes: np.ndarray) -> tuple[list[str | None], np.ndarray]:
    """Rank-1 for each row of probes (n, D): (identities, distances (n,))."""
    probes = np.atleast_2d(np.asarray(probes, np.float32))
    mat, lab = gallery.matrix()
    if len(mat) == 0:
        return [None] * len(probes), np.full(len(probes), np.inf)
    d = pairwise_distances(probes, mat, gallery.metric)
    j = d.argmin(axis=1)
    return [str(lab[k]) for k in j], d[np.arange(len(probes)), j]


def recognised(gallery: Gallery, true_identity: str, emb: np.ndarray | None) -> bool:
    """True when rank-1 is the true identity within the threshold (None embedding: False)."""
    if emb is None:
        return False
    ident, dist = identify(gallery, emb)
    return ident == true_identity and dist <= gallery.threshold


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def evasion(
    gallery: Gallery,
    probes: Iterable[tuple[str, np.ndarray | None, np.ndarray | None]],
    details: bool = False,
) -> dict[str, Any]:
    """Evasion: gallery of clean enrolment photos; probes (true identity, clean emb, cloaked emb).

    A `None` embedding means the judge found no face there (a cloaked face that is no longer
    detected counts as protected; a clean one that is not detected is not identified).
    Returns clean_accuracy (recognised when clean / faces), protection_rate (among the faces
    recognised when clean, the fraction not recognised when cloaked), cloaked_accuracy,
    counts, and per-face rows with `details`.
    """
    rows = []
    for true_id, clean, cloaked in probes:
        c_id, c_d = identify(gallery, clean) if clean is not None else (None, float("inf"))
        k_id, k_d = identify(gallery, cloaked) if cloaked is not None else (None, float("inf"))
        rows.append({
            "identity": true_id,
            "clean_pred": c_id, "clean_distance": c_d,
            "clean_ok": c_id == true_id and c_d <= gallery.threshold,
            "cloaked_pred": k_id, "cloaked_distance": k_d,
            "cloaked_ok": k_id == true_id and k_d <= gallery.threshold,
            "clean_missing": clean is None, "cloaked_missing": cloaked is None,
        })
    n = len(rows)
    clean_ok = [r for r in rows if r["clean_ok"]]
    protected = sum(not r["cloaked_ok"] for r in clean_ok)
    out: dict[str, Any] = {
        "mode": "evasion",
        "judge": gallery.judge,
        "faces": n,
        "clean_correct": len(clean_ok),
        "clean_accuracy": _rate(len(clean_ok), n),
        "clean_rank1_accuracy": _rate(sum(r["clean_pred"] == r["identity"] for r in rows), n),
        "protected": protected,
        "protection_rate": _rate(protected, len(clean_ok)),
        "cloaked_accuracy": _rate(sum(r["cloaked_ok"] for r in rows), n),
        "clean_missing": sum(r["clean_missing"] for r in rows),
        "cloaked_missing": sum(r["cloaked_missing"] for r in rows),
        "not_in_gallery": sum(r["identity"] not in gallery for r in rows),
        "threshold": gallery.threshold,
        "metric": gallery.metric,
    }
    if details:
        out["per_face"] = rows
    return out


def poisoning(
    gallery: Gallery,
    probes: Iterable[tuple[str, np.ndarray | None]],
    clean_gallery: Gallery | None = None,
    details: bool = False,
) -> dict[str, Any]:
    """Poisoning (Fawkes' threat model): `gallery` enrolled from cloaked photos, probes clean
    (true identity, clean emb). Protected = the clean probe is not recognised as its identity.

    With `clean_gallery` (same people enrolled from the clean photos), clean_accuracy is
    measured there and protection_rate is taken among the probes it recognises, as in
    `evasion`; without it clean_accuracy is None and protection_rate covers all probes.
    `protection_rate_all` always covers all probes.
    """
    rows = []
    for true_id, emb in probes:
        p_id, p_d = identify(gallery, emb) if emb is not None else (None, float("inf"))
        row = {"identity": true_id, "pred": p_id, "distance": p_d,
               "ok": p_id == true_id and p_d <= gallery.threshold, "missing": emb is None}
        if clean_gallery is not None:
            c_id, c_d = identify(clean_gallery, emb) if emb is not None else (None, float("inf"))
            row.update(clean_pred=c_id, clean_distance=c_d, clean_ok=c_id == true_id and c_d <= clean_gallery.threshold)
        rows.append(row)
    n = len(rows)
    prot_all = sum(not r["ok"] for r in rows)
    out: dict[str, Any] = {
        "mode": "poisoning",
        "judge": gallery.judge,
        "faces": n,
        "protected_all": prot_all,
        "protection_rate_all": _rate(prot_all, n),
        "missing": sum(r["missing"] for r in rows),
        "threshold": gallery.threshold,
        "metric": gallery.metric,
    }
    if clean_gallery is not None:
        clean_ok = [r for r in rows if r["clean_ok"]]
        protected = sum(not r["ok"] for r in clean_ok)
        out.update(clean_correct=len(clean_ok), clean_accuracy=_rate(len(clean_ok), n),
                   protected=protected, protection_rate=_rate(protected, len(clean_ok)))
    else:
        out.update(clean_correct=None, clean_accuracy=None, protected=prot_all, protection_rate=out["protection_rate_all"])
    if details:
        out["per_face"] = rows
    return out
