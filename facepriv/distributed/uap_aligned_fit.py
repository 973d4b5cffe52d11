"""Fitting the aligned-frame universal perturbation (`facepriv.attacks.uap_aligned`) over an
aligned crops dataset (`facepriv.pipeline.crops.extract_aligned`): in one process, or on Ray
with a coordinating actor. The crop-frame fit of the paper is facepriv/distributed/uap_fit.py.

Loop (`fit_aligned`)
--------------------
- W `AlignedShard` workers each load the surrogates once and hold one shard of the faces (rows
  i with i % W == shard) with their clean embeddings (and, given a held-out surrogate, its clean
  embeddings), computed once. workers=0 runs the same objects in this process.
- The `AlignedCoordinator` (a Ray actor with no CPU reserved, or a plain object) holds v and
  the history. Set-up: the fixed decoy direction (loss "decoy": the decoy-bank identity least
  similar to the mean clean embedding, from the workers' sums), and the held-out gallery (each
  identity's mean clean embedding under the held-out surrogate, from the workers' embeddings).
- A pass: the faces' global indices are permuted (seed, pass) and cut into mini-batches; for
  each batch every worker returns the gradient sum over its faces of the batch (`gradient`),
  the coordinator adds them, takes one signed step and projects v onto the xi ball. The jitter
  of a face depends on (seed, pass, its global index) only, so W workers take the
  single-process steps. After the pass every worker reports its figures on the merged v
  (`evaluate`: no jitter): the cosine shift (1 - mean cos(e(written a + v), e(a))) per
  surrogate, and with a held-out surrogate the faces its rank-1 identifies clean and no
  longer identifies; the coordinator aggregates them into the pass's history row.
- Stops after `max_passes` passes in total or on a plateau: the shift improved by less than
  `tol` over the last `patience` passes.

Outputs (`paths(out)`), rewritten after every pass so an interrupted fit resumes from its last
pass (same settings, surrogates and crops; `max_passes` counts resumed passes): OUT (.npy: v
float32 (3,S,S) in [0,1] units on the template frame), .png, .history.parquet and the .json
sidecar: "frame" ("aligned"), "template", "size", "xi", the surrogates (spec and weights
sha256), the fit data (crops dataset, source, faces, identities), the decoy and the figures.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from facepriv.attacks import uap_aligned as ua
from facepriv.errors import FacePrivError
from facepriv.io.perturbation import amplified_png, load_perturbation, load_sidecar, paths, write_atomic

FRAME = "aligned"
HISTORY_SCHEMA = pa.schema([
    ("pass", pa.int64()), ("shift", pa.float64()), ("loss", pa.float64()), ("holdout_protection", pa.float64()),
    ("holdout_identified", pa.int64()), ("faces", pa.int64()), ("lr", pa.float64()), ("seconds", pa.float64()),
    ("workers", pa.int64()),
])
# settings that must match to resume from a saved v (max_passes, patience, tol may change)
RESUME_KEYS = ("xi", "surrogate", "template", "size", "loss", "lr", "batch", "jitter", "jitter_strength",
               "jpeg_quality", "ti_sigma",
               "rms", "quality_target", "quality_weight", "seed")
LOSSES = ("untargeted", "decoy")


@dataclass
class AlignedFitSettings:
    xi: float = 12.0  # L-inf bound on v, 0-255 units
    surrogate: str = "mobilefacenet"  # comma-separated surrogate specs (facepriv.models.store)
    holdout: str | None = None  # a surrogate used only for the per-pass rank-1 protection figure
    template: str = "arcface112"
    size: int = 112
    loss: str = "decoy"  # untargeted | decoy (toward one fixed decoy direction)
    lr: float = 0.05  # signed step as a fraction of xi, decaying linearly to lr / 10 over max_passes
    batch: int = 32  # faces per step (over all workers)
    max_passes: int = 20
    patience: int = 3  # plateau: stop when the last `patience` passes improved the shift by < tol
    tol: float = 0.002
    jitter: float = 1.0  # probability of a re-detection jitter per face and step
    jitter_strength: float = 1.0  # its ranges x this (1: scale +-4%, rotation +-4 deg, shift +-3% of the frame)
    jpeg_quality: int | None = 95  # the written file's JPEG quality in the chain (None: PNG, uint8 only)
    ti_sigma: float = 0.0  # Gaussian smoothing of the summed gradient (px of the frame; 0 = off)
    rms: float | None = None  # also an L2 bound: v's RMS over the frame <= rms (0-255), L2 steps
    quality_target: float | None = None  # a SSIMULACRA 2 term per face in the loss (ua.shard_gradient)
    quality_weight: float = 1.0
    seed: int = 0
    norm: str = "linf"


def _jpeg_writer(quality: int | None):
    if quality is None:
        return None
    from facepriv.io import imageio

    def write(x: torch.Tensor) -> torch.Tensor:
        u8 = (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        back = np.stack([imageio.jpeg_round_trip(np.ascontiguousarray(a), quality) for a in u8])
        return torch.from_numpy(back).to(x.device).permute(0, 3, 1, 2).float() / 255

    return write


def _load_nets(specs, device):
    """Surrogates from specs (installed names / paths) or nn.Modules (tests, notebooks)."""
    from facepriv.models.store import load_surrogate, parse_specs

    if isinstance(specs, str):
        specs = parse_specs(specs)
    return [load_surrogate(s, device) if isinstance(s, str) else s.to(device).eval() for s in specs]


def _load_crops(crops):
    from facepriv.pipeline import crops as crops_mod

    return crops_mod.load(crops) if isinstance(crops, str) else crops


class AlignedShard:
    """A worker: the surrogates (loaded once) and one shard of the aligned crops."""

    def __init__(self, surrogates, holdout, crops, shard: int, num_shards: int, settings: dict,
                 torch_threads: int | None = None):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.s = AlignedFitSettings(**settings)
        c = _load_crops(crops)
        self.index = np.arange(shard, len(c), num_shards)
        self.local = {int(g): k for k, g in enumerate(self.index)}
        self.a = c.floats(self.index.tolist()) if len(self.index) else torch.zeros(0, 3, self.s.size, self.s.size)
        self.ids = [c.identities[i] for i in self.index]
        self.nets = _load_nets(surrogates, "cpu")
        self.models = [ua.FrameAdapter(n, self.s.size, self.s.template) for n in self.nets]
        self.clean = [ua.unit_embeddings(m, self.a) for m in self.models]
        self.decoys: list[torch.Tensor | None] = [None] * len(self.models)
        self.write = _jpeg_writer(self.s.jpeg_quality)
        self.holdout = None
        if holdout is not None:
            self.holdout = ua.FrameAdapter(_load_nets([holdout] if not isinstance(holdout, list) else holdout,
                                                      "cpu")[0], self.s.size, self.s.template)
            self.h_clean = ua.unit_embeddings(self.holdout, self.a)
        self.gallery = None

    def size(self) -> int:
        return len(self.index)

    def clean_sums(self) -> list[np.ndarray]:
        return [c.sum(0).numpy() for c in self.clean]

    def banks(self) -> list[np.ndarray | None]:
        from facepriv.models.decoys import find_bank
        from facepriv.models.store import weights_sha256

        banks = [find_bank(weights_sha256(n)) for n in self.nets]
        return [None if b is None else np.asarray(b.embeddings, np.float32) for b in banks]

    def set_decoys(self, decoys: Sequence[np.ndarray | None]) -> None:
        self.decoys = [None if d is None else torch.from_numpy(np.asarray(d, np.float32)) for d in decoys]

    def holdout_clean(self) -> tuple[np.ndarray, list[str]]:
        return self.h_clean.numpy(), self.ids

    def set_gallery(self, centroids: np.ndarray, names: list[str]) -> None:
        self.gallery = torch.from_numpy(np.asarray(centroids, np.float32))
        pos = {n: i for i, n in enumerate(names)}
        self.truth = torch.tensor([pos[n] for n in self.ids], dtype=torch.long)

    def gradient(self, v: np.ndarray, batch: Sequence[int], pass_index: int) -> tuple[np.ndarray, float, int]:
        """Gradient sum over this shard's faces of the batch (global indices) at v."""
        mine = [int(g) for g in batch if int(g) in self.local]
        vt = torch.from_numpy(np.asarray(v, np.float32))
        if not mine:
            return np.zeros_like(np.asarray(v, np.float32)), 0.0, 0
        k = torch.tensor([self.local[g] for g in mine], dtype=torch.long)
        k_ = self.s.jitter_strength
        mats = ua.jitter_matrices(len(mine), self.s.size, ua.face_rngs(self.s.seed, pass_index, mine), p=self.s.jitter,
                                  scale=0.04 * k_, degrees=4.0 * k_, shift=0.03 * k_) if self.s.jitter > 0 else None
        q = (self.s.quality_target, self.s.quality_weight) if self.s.quality_target is not None else None
        g, loss, n = ua.shard_gradient(self.models, self.a[k], [c[k] for c in self.clean], vt,
                                       self.decoys, mats, self.write, q)
        return g.numpy(), loss, n

    @torch.no_grad()
    @torch.no_grad()  # figures only: no graph (faceres at 224 px kept ~10 GB of activations per worker)
    def evaluate(self, v: np.ndarray, batch: int = 64) -> dict[str, float]:
        """Sums over the shard at v (no jitter): cos to the clean embedding (mean over the
        surrogates), faces the held-out surrogate identifies clean / identifies clean but not
        under v."""
        vt = torch.from_numpy(np.asarray(v, np.float32))
        out = {"cos": 0.0, "faces": len(self.index), "identified": 0, "protected": 0}
        for i in range(0, len(self.index), batch):
            x = ua.chain(self.a[i : i + batch], vt, None, self.write)
            out["cos"] += float(sum((ua.unit_embeddings(m, x) * c[i : i + batch]).sum() for m, c in
                                    zip(self.models, self.clean)) / len(self.models))
            if self.gallery is not None:
                t = self.truth[i : i + batch]
                ok = ua.rank1(self.h_clean[i : i + batch], self.gallery) == t
                adv = ua.rank1(ua.unit_embeddings(self.holdout, x), self.gallery) == t
                out["identified"] += int(ok.sum())
                out["protected"] += int((ok & ~adv).sum())
        return out


class AlignedCoordinator:
    """Holds v and the history; runs the passes over the workers (Ray handles, or local objects
    with `remote=False`)."""

    def __init__(self, workers: list, settings: dict, v0: np.ndarray | None, history: list[dict], faces: int,
                 remote: bool = True):
        self.workers, self.remote = workers, remote
        self.s = AlignedFitSettings(**settings)
        self.n = int(faces)
        v = torch.zeros(3, self.s.size, self.s.size) if v0 is None else torch.from_numpy(np.asarray(v0, np.float32))
        self.v = ua.project(v, self.s.xi, self.s.rms)
        self.history = list(history)
        self.decoy: dict[str, Any] | None = None

    def _map(self, name: str, *args) -> list:
        if not self.remote:
            return [getattr(w, name)(*args) for w in self.workers]
        import ray

        refs = [ray.put(a) if isinstance(a, np.ndarray) else a for a in args]
        return ray.get([getattr(w, name).remote(*refs) for w in self.workers])

    def setup(self) -> dict[str, Any]:
        """The fixed decoy direction and the held-out gallery (module doc)."""
        if self.s.loss == "decoy":
            sums = self._map("clean_sums")
            banks = self._map("banks")[0]
            decoys, picks = [], []
            for k, bank in enumerate(banks):
                j = None if bank is None else ua.fixed_decoy(torch.from_numpy(sum(s[k] for s in sums)),
                                                             torch.from_numpy(bank))
                decoys.append(None if j is None else torch.nn.functional.normalize(torch.from_numpy(bank[j]), dim=0).numpy())
                picks.append(j)
            self._map("set_decoys", decoys)
            self.decoy = {"bank_index": picks}
        if self.s.holdout:
            parts = self._map("holdout_clean")
            embs = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 1))
            ids = [i for p in parts for i in p[1]]
            names = sorted(set(ids))
            cent = np.stack([embs[[k for k, i in enumerate(ids) if i == n]].mean(0) for n in names])
            self._map("set_gallery", cent, names)
        return {"decoy": self.decoy}

    def next_pass(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        p = len(self.history) + 1
        lr = ua.step_size(self.s.lr, p, self.s.max_passes)
        loss, seen = 0.0, 0
        for batch in ua.pass_batches(self.n, self.s.batch, self.s.seed, p):
            parts = self._map("gradient", self.v.numpy(), batch.tolist(), p)
            g = torch.from_numpy(sum(r[0] for r in parts))
            loss += sum(r[1] for r in parts)
            seen += sum(r[2] for r in parts)
            self.v = ua.step(self.v, g, lr, self.s.xi, self.s.ti_sigma, self.s.rms)
        ev = self._map("evaluate", self.v.numpy())
        faces = sum(e["faces"] for e in ev)
        ident = sum(e["identified"] for e in ev)
        rec = {"pass": p, "shift": 1.0 - sum(e["cos"] for e in ev) / max(faces, 1),
               "loss": loss / max(seen, 1),
               "holdout_protection": (sum(e["protected"] for e in ev) / ident) if self.s.holdout and ident else None,
               "holdout_identified": ident if self.s.holdout else None, "faces": faces, "lr": lr,
               "seconds": time.perf_counter() - t0, "workers": len(self.workers) if self.remote else 0}
        self.history.append(rec)
        return rec

    def state(self) -> tuple[np.ndarray, list[dict]]:
        return self.v.numpy(), self.history


# -- outputs ------------------------------------------------------------------------------

def _surrogate_info(specs) -> list[dict[str, Any]]:
    from facepriv.models.store import parse_specs, weights_sha256

    names = parse_specs(specs) if isinstance(specs, str) else [getattr(s, "name", type(s).__name__) for s in specs]
    nets = _load_nets(specs, "cpu")
    return [{"spec": n, "sha256": weights_sha256(m)} for n, m in zip(names, nets)]


def save_outputs(out: str, v, history: list[dict], settings: AlignedFitSettings, info: dict[str, Any]) -> None:
    p = paths(out)
    arr = np.ascontiguousarray(np.asarray(v, np.float32))
    buf = io.BytesIO()
    np.save(buf, arr)
    write_atomic(p["npy"], buf.getvalue())
    write_atomic(p["png"], amplified_png(arr))
    hb = io.BytesIO()
    pq.write_table(pa.Table.from_pydict({f.name: [h.get(f.name) for h in history] for f in HISTORY_SCHEMA},
                                        schema=HISTORY_SCHEMA), hb)
    write_atomic(p["history"], hb.getvalue())
    last = history[-1] if history else {}
    side = {
        "format": "facepriv-uap/2", "frame": FRAME, "template": settings.template, "size": settings.size,
        "xi": settings.xi,
        "units": "v is float32 (3, S, S) in [0, 1] pixel units on the aligned template frame; |v| <= xi / 255",
        "shape": list(arr.shape), "settings": asdict(settings), "passes": len(history),
        "shift": last.get("shift"), "holdout_protection": last.get("holdout_protection"),
        "linf_255": float(np.abs(arr).max() * 255), **info,
    }
    write_atomic(p["json"], json.dumps(side, indent=2, default=str).encode())


def load_state(out: str, settings: AlignedFitSettings, info: dict[str, Any]) -> tuple[np.ndarray | None, list[dict]]:
    """(v0, history) to resume from, or (None, []); FacePrivError when OUT holds another fit."""
    side = load_sidecar(out)
    if side is None:
        return None, []
    if side.get("frame") != FRAME:
        raise FacePrivError(f"{out} holds a fit in another frame ({side.get('frame', 'crop')}); pass --restart "
                            "or choose another --out")
    old, new = side.get("settings", {}), asdict(settings)
    defaults = asdict(AlignedFitSettings())  # a key an older sidecar lacks had its default then
    diff = [k for k in RESUME_KEYS if old.get(k, defaults[k]) != new[k]]
    diff += [k for k in ("surrogates", "fit_data") if side.get(k) != info.get(k)]
    if diff:
        raise FacePrivError(f"{out} holds a fit with different {', '.join(diff)}; pass --restart to start over, "
                            "or choose another --out")
    with fsspec.open(paths(out)["history"], "rb") as f:
        history = pq.read_table(io.BytesIO(f.read())).to_pylist()
    return load_perturbation(paths(out)["npy"]), history


def _line(rec: dict[str, Any]) -> str:
    h = rec.get("holdout_protection")
    return (f"pass {rec['pass']:3d}: shift {rec['shift']:.4f}  loss {rec['loss']:.4f}"
            + (f"  held-out rank-1 protection {h:.3f} of {rec['holdout_identified']}" if h is not None else "")
            + f"  {rec['faces']} faces  {rec['seconds']:.1f}s")


def fit_aligned(crops, settings: AlignedFitSettings, workers: int = 0, out: str | None = None,
                info: dict[str, Any] | None = None, v0: np.ndarray | None = None, history: list | None = None,
                torch_threads: int | None = None, surrogates=None, holdout=None,
                log: Callable[[str], None] = print) -> tuple[np.ndarray, list[dict]]:
    """The loop (module doc); workers = 0: in this process, else W Ray actors on the Ray
    instance already initialised. `crops`: a crops dataset path (or `Crops` in process);
    `surrogates` / `holdout` default to the settings' specs (nn.Modules for tests)."""
    if settings.loss not in LOSSES:
        raise FacePrivError(f"--loss must be one of {', '.join(LOSSES)}, got {settings.loss!r}")
    history = list(history or [])
    sd = asdict(settings)
    sur = surrogates if surrogates is not None else settings.surrogate
    hold = holdout if holdout is not None else settings.holdout
    n = len(_load_crops(crops)) if not isinstance(crops, str) else \
        pq.ParquetFile(fsspec.open(crops, "rb").open()).metadata.num_rows
    actors = []
    if workers == 0:
        coord = AlignedCoordinator([AlignedShard(sur, hold, crops, 0, 1, sd, torch_threads)], sd, v0, history, n,
                                   remote=False)
        call = lambda name, *args: getattr(coord, name)(*args)  # noqa: E731
    else:
        import ray

        w_cls = ray.remote(num_cpus=1)(AlignedShard)
        ws = [w_cls.remote(sur, hold, crops, i, workers, sd, torch_threads) for i in range(workers)]
        coord = ray.remote(num_cpus=0)(AlignedCoordinator).remote(ws, sd, v0, history, n, True)
        actors = [coord, *ws]
        call = lambda name, *args: ray.get(getattr(coord, name).remote(*args))  # noqa: E731
    try:
        meta = call("setup")
        info = {**(info or {}), **meta}
        while len(history) < settings.max_passes:
            rec = call("next_pass")
            v, history = call("state")
            stop = ua.plateaued([h["shift"] for h in history], settings.patience, settings.tol)
            info["stopped"] = "plateau" if stop else ("max_passes" if len(history) >= settings.max_passes else None)
            if out:
                save_outputs(out, v, history, settings, info)
            log(_line(rec))
            if stop:
                log(f"plateau: shift improved by < {settings.tol:g} over the last {settings.patience} passes")
                break
        v, history = call("state")
        return np.array(v, np.float32), list(history)
    finally:
        if actors:
            import ray

            for a in actors:
                ray.kill(a)


def fit(data_dir: str, out: str, settings: AlignedFitSettings, workers: int | None = None,
        crops_path: str | None = None, restart: bool = False, address: str | None = None,
        s3_endpoint: str | None = None, retries: int = 5, progress: bool = True,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`facepriv uap fit --frame aligned`: aligned crops once, then the loop."""
    from facepriv.pipeline import crops as crops_mod

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    crops_path = crops_path or paths(out)["crops"]
    c = crops_mod.load_or_extract(data_dir, crops_path, settings.size, 1.0, log=log, frame=FRAME,
                                  template=settings.template, s3_endpoint=s3_endpoint, retries=retries,
                                  progress=progress)
    info = {"surrogates": _surrogate_info(settings.surrogate),
            "holdout": _surrogate_info(settings.holdout) if settings.holdout else None,
            "fit_data": {"crops": crops_path, "source": c.meta.get("source"), "faces": len(c),
                         "identities": len(set(c.identities))}}
    v0, history = (None, []) if restart else load_state(out, settings, info)
    if history:
        log(f"resuming {out}: {len(history)} pass(es) done, shift {history[-1]['shift']:.4f}")
    t0 = time.perf_counter()
    if workers == 0:
        info["mode"] = "single process"
        v, history = fit_aligned(c, settings, 0, out, info, v0, history, log=log)
    else:
        from facepriv.distributed.runner import cluster_plan, init_ray

        init_ray(address)
        workers, _, threads = cluster_plan(workers, 0)
        info["mode"] = f"ray, {workers} worker(s)"
        v, history = fit_aligned(crops_path, settings, workers, out, info, v0, history, threads, log=log)
    seconds = time.perf_counter() - t0
    last = history[-1] if history else {}
    log(f"saved {out} (+ .png, .history.parquet, .json): {len(history)} pass(es), shift {last.get('shift')} "
        f"on {len(c)} faces, {seconds:.0f}s")
    return {"out": out, "passes": len(history), "shift": last.get("shift"),
            "holdout_protection": last.get("holdout_protection"), "faces": len(c), "seconds": seconds}
