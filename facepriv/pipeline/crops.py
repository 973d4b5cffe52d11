"""A crops dataset: face crops extracted once from a labelled archive, stored as Parquet, so
iterative work over the same faces (the universal perturbation's passes) never re-runs MTCNN.

Extraction is `facepriv.pipeline.train.extract_faces` (the face nearest the image centre, one per
photo, DATA_DIR/<identity>/<photo>) at `scale` 1.0: the same square crop box that the cloak
pipeline perturbs and the judge re-crops (`geometry.crop_faces`), resized to the model's
input size.

Schema (declared here, once): one row per face

    identity    string   the photo's parent folder
    source_key  string   the photo's key under the source archive
    crop        binary   uint8 pixels, C x H x W (RGB) row-major, 3 * size * size bytes

and in the file's key-value metadata: `facepriv.pipeline.crops` = JSON {"size", "scale", "source",
"photos", "faces", "skipped"}.

A second kind, ``frame: "aligned"`` in the metadata (`extract_aligned`): each face aligned by its
5 MTCNN landmarks onto a template (`facepriv.core.align`, e.g. arcface112 at 112 x 112), the frame a
universal perturbation of `facepriv.attacks.uap_aligned` lives in; the metadata then also holds
"template". Same schema, so a fit's passes read only small aligned crops.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from facepriv.errors import FacePrivError

SCHEMA = pa.schema([("identity", pa.string()), ("source_key", pa.string()), ("crop", pa.binary())])
META_KEY = b"facepriv.pipeline.crops"


@dataclass
class Crops:
    faces: torch.Tensor  # (N, 3, S, S) uint8
    identities: list[str]
    keys: list[str]
    meta: dict

    def __len__(self) -> int:
        return len(self.keys)

    def floats(self, idx=None) -> torch.Tensor:
        """(n, 3, S, S) float32 in [0, 1] (all rows, or the rows `idx`)."""
        x = self.faces if idx is None else self.faces[torch.as_tensor(idx, dtype=torch.long)]
        return x.float().div_(255)


def to_table(identities: list[str], keys: list[str], faces: torch.Tensor, meta: dict) -> pa.Table:
    faces = faces.to(torch.uint8).contiguous().cpu().numpy()
    if faces.ndim != 4 or faces.shape[1] != 3 or faces.shape[2] != faces.shape[3]:
        raise ValueError(f"crops must be (N, 3, S, S), got {faces.shape}")
    crop = pa.array([f.tobytes() for f in faces], pa.binary())
    t = pa.Table.from_arrays([pa.array(identities, pa.string()), pa.array(keys, pa.string()), crop], schema=SCHEMA)
    return t.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})


def from_table(table: pa.Table) -> Crops:
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise FacePrivError("not a facepriv crops dataset (no facepriv.pipeline.crops metadata)")
    meta = json.loads(raw)
    s = int(meta["size"])
    n = table.num_rows
    buf = b"".join(table.column("crop").to_pylist()) if n else b""
    if len(buf) != n * 3 * s * s:
        raise FacePrivError(f"crops dataset is corrupt: {len(buf)} bytes for {n} crops of {s}x{s}")
    faces = torch.from_numpy(np.frombuffer(buf, np.uint8).copy().reshape(n, 3, s, s))
    return Crops(faces, table.column("identity").to_pylist(), table.column("source_key").to_pylist(), meta)


def save(path: str, crops: Crops) -> None:
    buf = io.BytesIO()
    pq.write_table(to_table(crops.identities, crops.keys, crops.faces, crops.meta), buf)
    with fsspec.open(path, "wb") as f:
        f.write(buf.getvalue())


def load(path: str) -> Crops:
    try:
        with fsspec.open(path, "rb") as f:
            table = pq.read_table(io.BytesIO(f.read()))
    except FileNotFoundError as e:
        raise FacePrivError(f"crops dataset {path} not found") from e
    return from_table(table)


def exists(path: str) -> bool:
    fs, p = fsspec.core.url_to_fs(path)
    return fs.exists(p)


def extract(data_dir: str, size: int, scale: float = 1.0, device: str | torch.device = "cpu",
            s3_endpoint: str | None = None, retries: int = 5, progress: bool = True) -> Crops:
    """Detect and crop the central face of every photo under DATA_DIR/<identity>/ (MTCNN)."""
    from facepriv.io.archive import Archive, storage_options
    from facepriv.pipeline.faces import FaceDetector
    from facepriv.pipeline.train import extract_faces

    archive = Archive(data_dir, storage_options(data_dir, s3_endpoint, retries), retries)
    _, rows, summary = extract_faces(archive, size, scale, FaceDetector(device=device), progress)
    if not rows:
        raise FacePrivError(f"no faces found under {data_dir}")
    meta = {"size": int(size), "scale": float(scale), "source": data_dir, "photos": summary["photos"],
            "faces": len(rows), "skipped": summary["skipped"]}
    return Crops(torch.stack([r[2] for r in rows]), [r[0] for r in rows], [r[1] for r in rows], meta)


def extract_aligned(data_dir: str, size: int, template: str | None = None, device: str | torch.device = "cpu",
                    s3_endpoint: str | None = None, retries: int = 5, progress: bool = True) -> Crops:
    """Detect the central face of every photo under DATA_DIR/<identity>/ (MTCNN) and align it by
    its 5 landmarks onto `template` at size x size (`facepriv.core.align.align_faces`)."""
    from facepriv.core.align import align_faces, template as template_points
    from facepriv.core import geometry
    from facepriv.io import imageio
    from facepriv.io.archive import Archive, storage_options
    from facepriv.pipeline.faces import FaceDetector

    template_points(template, size)  # an unknown template name fails before any detection
    archive = Archive(data_dir, storage_options(data_dir, s3_endpoint, retries), retries)
    keys = sorted(k for k in archive.list_images() if len(k.split("/")) >= 2)
    det = FaceDetector(device=device)
    rows, skipped = [], {}
    for start in range(0, len(keys), 16):
        chunk = []
        for k in keys[start : start + 16]:
            try:
                chunk.append((k, imageio.decode(archive.read_bytes(k)).rgb))
            except FacePrivError:
                skipped["unreadable"] = skipped.get("unreadable", 0) + 1
        for (k, rgb), d in zip(chunk, det.detect([rgb for _, rgb in chunk])):
            if len(d) == 0:
                skipped["no_face"] = skipped.get("no_face", 0) + 1
                continue
            i = geometry.nearest_to_centre(d.boxes, rgb.shape[1], rgb.shape[0])
            img = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)
            a = align_faces(img, np.asarray(d.landmarks[i : i + 1], np.float64), size, template)[0]
            rows.append((k.split("/")[-2], k, a.mul(255).round().clamp(0, 255).byte()))
        if progress:
            print(f"aligned {len(rows)} faces from {min(start + 16, len(keys))}/{len(keys)} photos",
                  file=sys.stderr, flush=True)
    if not rows:
        raise FacePrivError(f"no faces found under {data_dir}")
    meta = {"size": int(size), "scale": 1.0, "frame": "aligned", "template": template, "source": data_dir,
            "photos": len(keys), "faces": len(rows), "skipped": skipped}
    return Crops(torch.stack([r[2] for r in rows]), [r[0] for r in rows], [r[1] for r in rows], meta)


def load_or_extract(data_dir: str, path: str, size: int, scale: float = 1.0, log=None, frame: str = "crop",
                    template: str | None = None, **kwargs) -> Crops:
    """Reuse `path` when it holds crops of `data_dir` at this size and scale (and frame: "crop" =
    the square crop box, "aligned" = `extract_aligned` on `template`); else extract and save."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if exists(path):
        c = load(path)
        if c.meta.get("source") == data_dir and int(c.meta.get("size", -1)) == size and \
                float(c.meta.get("scale", -1)) == scale and c.meta.get("frame", "crop") == frame and \
                c.meta.get("template") == (template if frame == "aligned" else None):
            log(f"reusing crops dataset {path} ({len(c)} faces)")
            return c
        log(f"{path} holds crops of {c.meta.get('source')} at size {c.meta.get('size')}: re-extracting")
    c = extract_aligned(data_dir, size, template, **kwargs) if frame == "aligned" else \
        extract(data_dir, size, scale, **kwargs)
    save(path, c)
    log(f"extracted {len(c)} faces from {c.meta['photos']} photos into {path} "
        f"(skipped: {c.meta['skipped'] or 'none'})")
    return c
