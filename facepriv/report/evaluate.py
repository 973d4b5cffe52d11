"""Judge a finished run again, from its files: independent judges and robustness transforms.

Shell around pure pieces: it reads the clean original (SRC) and the written cloaked file
(DST) of every labelled face in a run's manifest, re-detects the face in the written file
with MTCNN (like `facepriv.pipeline.cloaker` does), and hands embeddings to the judge arithmetic
(`facepriv.judges.evasion` / `poisoning`). For robustness, each cloaked file goes through a
`facepriv.report.robustness` transform and is re-detected and judged again, by the run's surrogate
(re-classified with `facepriv.core.geometry.crop_faces`, as the pipeline's judge stage does) and
by every judge.

A probe is the labelled face of an ok row (the face nearest the centre, identity = its
`label`; with labels "none" the judge's own clean rank-1 identity stands in for the truth).

Two protocols per judge (`facepriv.judges.verification`): *identification* (rank-1 in the
clean --gallery, `evasion` / `poisoning`) and *verification* (does the cloaked face still
match a clean photo of the same person at the judge's threshold). Verification is against the
probe's identity in the gallery, or, with no gallery or `verify_against="original"`, each
cloaked face of every probe's photo (all manifest faces, not only the probe) against the same
face in the clean original, which needs neither gallery nor labels (group photos).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from facepriv.report import robustness
from facepriv.io.archive import Archive
from facepriv.judges import AGAINST, Gallery, Judge, evasion, identify, poisoning, self_verification, verification
from facepriv.report.aggregate import faces_of
from facepriv.report.probes import Surrogate, detector_for, face_dict, probes_of
from facepriv.report import cache
from facepriv.report.measure import Measure, Measurer, Task, WorkerSpec, ray_workers
from facepriv.report import leave_one_out as loo


@dataclass
class RunEvaluation:
    judges: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> evasion/poisoning result
    robustness: dict[str, dict[str, Any]] = field(default_factory=dict)  # transform -> {fooling_rate, judges}
    faces: list[dict[str, Any]] = field(default_factory=list)  # per probe, for the Parquet table / panels
    notes: list[str] = field(default_factory=list)


class Evaluator:
    """Holds the detector, judges and enrolment galleries across runs (clean embeddings are
    cached per (judge, source URL, key, face), so several runs over the same SRC embed it once).

    `verify_against`: "gallery" (the probe identity's clean gallery photos), "original" (each
    face's own clean face in SRC) or None: "gallery" for a judge with a gallery, else "original".
    A judge without a gallery gets verification only (its identification rates are None).
    """

    def __init__(self, judges: Sequence[Judge], galleries: dict[str, Gallery] | None = None,
                 mode: str = "evasion", transforms: Sequence[str] = (), labels: str = "folder",
                 device: str = "cpu", progress: bool = True, verify_against: str | None = None,
                 specs: Sequence[str] | None = None, workers: int | None = 0, batch_size: int = 8,
                 cache_at: tuple[Archive, str] | None = None, address: str | None = None,
                 s3_endpoint: str | None = None, retries: int = 5, remote: Any = None):
        if mode not in ("evasion", "poisoning"):
            raise ValueError(f"mode must be evasion or poisoning, got {mode!r}")
        if verify_against is not None and verify_against not in AGAINST:
            raise ValueError(f"verify_against must be one of {AGAINST} or None, got {verify_against!r}")
        self.verify_against = verify_against
        # measuring: in Ray workers (`workers` > 1; judges built there from `specs`, the judge
        # specs `self.judges` came from) or here; `cache_at` (archive, prefix): the report cache
        self.specs = list(specs) if specs is not None else None
        self.workers = None if workers is None else int(workers)
        self.batch_size = max(1, int(batch_size))
        self.cache_at = cache_at
        self.address, self.s3_endpoint, self.retries = address, s3_endpoint, retries
        # the shell's Ray layer (the module facepriv.distributed.judging: measure_on_ray(WorkerSpec,
        # tasks, workers, batch_size, address, on_done) -> measures); None: always in this process
        self.remote = remote
        self.last_counts: dict[str, int] = {}
        self.judges = list(judges)
        self.galleries = dict(galleries or {})
        self.mode = mode
        self.transforms = list(transforms)
        for t in self.transforms:
            robustness.get_transform(t)  # fail early on a bad name
        self.labels = labels
        self.device = device
        self.progress = progress
        self._clean_cache: dict[tuple[str, str, str, int], np.ndarray | None] = {}
        # (DST url, run id) -> (transforms evaluated, result): a run judged once with a superset of
        # the transforms asked for now is not judged again (several reports over the same runs)
        self._runs: dict[tuple[str, str], tuple[frozenset, RunEvaluation]] = {}
        self._surrogates: dict[str, Surrogate | None] = {}

    def against(self, judge: Judge) -> str:
        """What `judge`'s verification compares a cloaked face with: "gallery" or "original"."""
        if self.verify_against is not None:
            return self.verify_against
        return "gallery" if judge.name in self.galleries else "original"

    def surrogate(self, model: str | None, notes: list[str]) -> Surrogate | None:
        if not model:
            return None
        if model not in self._surrogates:
            try:
                self._surrogates[model] = Surrogate(model, self.device)
            except Exception as e:  # noqa: BLE001 - the report goes on without the surrogate columns
                notes.append(f"surrogate {model!r} not loadable ({type(e).__name__}: {e}); "
                             "robustness has no surrogate fooling rate")
                self._surrogates[model] = None
        return self._surrogates[model]

    def evaluate(self, rows: Sequence[dict[str, Any]], src: Archive | None, dst: Archive) -> RunEvaluation:
        """Judge one run's written files (cached per DST and run id)."""
        run_key = (dst.url, str(next((r.get("run_id") for r in rows if r.get("run_id")), "")))
        hit = self._runs.get(run_key)
        if hit is not None and hit[0] >= frozenset(self.transforms):
            return hit[1]
        ev = self._evaluate(rows, src, dst)
        self._runs[run_key] = (frozenset(self.transforms), ev)
        return ev

    def _evaluate(self, rows: Sequence[dict[str, Any]], src: Archive | None, dst: Archive) -> RunEvaluation:
        ev = RunEvaluation()
        probes = probes_of(rows, self.labels)
        if not probes:
            ev.notes.append("no ok row with a face: nothing to judge")
            return ev
        model = next((r.get("model") for r in rows if r.get("model")), None)
        sur = self.surrogate(model, ev.notes) if self.transforms else None
        target = None
        sj = next((r.get("settings_json") for r in rows if r.get("settings_json")), None)
        if sj:
            target = json.loads(sj).get("target")
        if src is None and self.judges:
            ev.notes.append("the run's summary.json names no readable SRC: judges need the clean originals")
        detector = detector_for(rows, self.device)
        names = [j.name for j in self.judges] if src is not None else []
        judges = self.judges if names else []
        own = {jd.name for jd in judges if self.against(jd) == "original"}  # verified against their own clean face
        src_url = src.url if src is not None else ""
        tasks = []
        for p in probes:
            fds = [face_dict(f) for f in faces_of(p.row)]
            wanted = {jd.name: (list(range(len(fds))) if jd.name in own else [p.index]) for jd in judges}
            need = {n: [i for i in idx if (n, src_url, p.key, i) not in self._clean_cache] for n, idx in wanted.items()}
            tasks.append(Task(p.key, p.output_key, [{"box": f["box"].tolist(), "landmarks": None if f["landmarks"] is None
                                                     else f["landmarks"].tolist()} for f in fds],
                              p.index, wanted, need, bool(p.face.get("judged")),
                              {k: p.face.get(k) for k in ("label", "clean_pred")}))
        measures = self._measures(rows, probes, tasks, src, dst, judges, detector, sur, target, ev.notes)
        # embeddings[name] -> list over probes of (clean, cloaked, {transform: emb})
        clean: dict[str, list] = {n: [] for n in names}
        cloak: dict[str, list] = {n: [] for n in names}
        trans: dict[str, dict[str, list]] = {t: {n: [] for n in names} for t in self.transforms}
        # self-verification: (clean, cloaked) for every face of every probe's photo; the probe's position
        pairs: dict[str, list] = {n: [] for n in own}
        pairs_t: dict[str, dict[str, list]] = {t: {n: [] for n in own} for t in self.transforms}
        probe_at: dict[str, list[int]] = {n: [] for n in own}
        sur_counts = {t: [0, 0] for t in self.transforms}  # judged, fooled
        for p, t, m in zip(probes, tasks, measures):
            rec: dict[str, Any] = {"source_key": p.key, "identity": p.identity, "label": p.face.get("label"),
                                   "judged": bool(p.face.get("judged")), "fooled": p.face.get("fooled"),
                                   "clean_pred": p.face.get("clean_pred"), "cloaked_pred": p.face.get("cloaked_pred")}
            if m.error:
                ev.notes.append(m.error)
                continue
            if m.clean_error:
                ev.notes.append(m.clean_error)
            rec["redetected"] = m.redetected
            pi = p.index
            for jd in judges:
                n, idx = jd.name, t.wanted[jd.name]
                ce = [self._clean_cache[(n, src_url, p.key, i)] for i in idx]
                ke = [m.cloak[n][i] for i in idx]
                clean[n].append(ce[idx.index(pi)])
                cloak[n].append(ke[idx.index(pi)])
                if n in own:
                    probe_at[n].append(len(pairs[n]) + idx.index(pi))
                    pairs[n].extend(zip(ce, ke))
            for tr in self.transforms:
                if tr in m.trans_pred:
                    sur_counts[tr][0] += 1
                    sur_counts[tr][1] += m.trans_fooled[tr]
                    rec[f"{tr}_pred"] = m.trans_pred[tr]
                    rec[f"{tr}_fooled"] = m.trans_fooled[tr]
                rec[f"{tr}_redetected"] = m.trans_redetected.get(tr, False)
                for jd in judges:
                    n, idx = jd.name, t.wanted[jd.name]
                    ke = [m.trans[tr][n][i] for i in idx]
                    trans[tr][n].append(ke[idx.index(pi)])
                    if n in own:
                        pairs_t[tr][n].extend(zip((self._clean_cache[(n, src_url, p.key, i)] for i in idx), ke))
            rec["_probe"] = p
            ev.faces.append(rec)
        roles = loo.roles([loo.judge_identity(j) for j in self.judges],
                          [loo.spec_identity(sp) for sp in loo.crafting_specs(rows)]) if names else {}
        for jd in judges:
            n = jd.name
            res, per = self._judge(jd, ev.faces, clean[n], cloak[n])
            res["verification"], vper = self._verify(jd, ev.faces, clean[n], cloak[n], pairs.get(n))
            res["role"] = roles[n]  # white-box (a crafting surrogate) / held-out / independent
            res["crafting"] = roles[n] == loo.ROLE_WHITE_BOX
            res["embedding_shift"] = _mean_shift(clean[n], cloak[n], getattr(jd, "metric", "euclidean"))
            ev.judges[n] = res
            for rec, pf in zip(ev.faces, per):
                rec[f"{n}_clean_pred"] = pf.get("clean_pred")
                rec[f"{n}_cloaked_pred"] = pf.get("cloaked_pred")
                rec[f"{n}_protected"] = pf.get("protected")
                d = pf.get("cloaked_distance")
                rec[f"{n}_cloaked_distance"] = None if d is None or not np.isfinite(d) else float(d)
            for rec, vf in zip(ev.faces, vper if n not in own else [vper[k] for k in probe_at[n]]):
                d = vf.get("cloaked_distance", vf.get("distance"))
                rec[f"{n}_verify_distance"] = None if d is None or not np.isfinite(d) else float(d)
                rec[f"{n}_verify_protected"] = vf.get("protected")
        for t in self.transforms:
            judged, fooled = sur_counts[t]
            entry: dict[str, Any] = {"judged": judged if sur else None, "fooled": fooled if sur else None,
                                     "fooling_rate": (fooled / judged) if (sur and judged) else None, "judges": {}}
            for jd in judges:
                n = jd.name
                entry["judges"][n], _ = self._judge(jd, ev.faces, clean[n], trans[t][n])
                entry["judges"][n]["verification"], _ = self._verify(jd, ev.faces, clean[n], trans[t][n],
                                                                     pairs_t[t].get(n))
            ev.robustness[t] = entry
        return ev

    def _measures(self, rows, probes, tasks: list[Task], src: Archive | None, dst: Archive, judges, detector, sur,
                  target, notes: list[str]) -> list[Measure]:
        """Each task's measure: from the report cache when this row was measured before with this
        configuration, else measured now (in Ray workers with `workers` > 1 and judge specs, else
        here) and added to the cache. Clean embeddings land in the cross-run clean cache."""
        src_url = src.url if src is not None else ""
        run_id = str(next((r.get("run_id") for r in rows if r.get("run_id")), ""))
        store = None
        if self.cache_at is not None:
            archive, prefix = self.cache_at
            config = cache.signature(cache.VERSION, [cache.judge_identity(j) for j in judges], self.transforms,
                                     dataclasses.asdict(detector.settings), getattr(sur, "path", None), target,
                                     src_url)
            store = cache.MeasureCache(archive, prefix, run_id, config)
        sigs = [cache.row_signature(p.row, t.wanted, t.faces) for p, t in zip(probes, tasks)]
        known = store.load() if store is not None else {}
        if store is not None:
            notes.extend(store.notes)
        got: list[Measure | None] = [None] * len(tasks)
        for k, sig in enumerate(sigs):
            if sig in known:
                got[k] = Measure.from_bytes(known[sig])
        todo = [k for k, m in enumerate(got) if m is None]
        self.last_counts = {"probes": len(tasks), "cached": len(tasks) - len(todo), "measured": len(todo)}
        if todo:
            bar = tqdm(total=len(todo), desc=f"judging {len(todo)} faces"
                       + (f" ({len(tasks) - len(todo)} cached)" if len(todo) < len(tasks) else ""),
                       unit="face", disable=not self.progress, file=sys.stderr)
            sub = [tasks[k] for k in todo]
            workers = ray_workers(self.workers, len(sub))
            if workers > 1 and self.specs is not None and self.remote is not None and len(sub) > self.batch_size:
                spec = WorkerSpec(src_url or None, dst.url, list(self.specs), list(self.transforms),
                                  dataclasses.asdict(detector.settings), getattr(sur, "path", None), target,
                                  self.device, self.s3_endpoint, self.retries)
                fresh = self.remote.measure_on_ray(spec, sub, workers, self.batch_size, self.address,
                                                   on_done=bar.update)
            else:
                m = Measurer(src, dst, judges, detector, self.transforms, sur, target)
                fresh = []
                for i in range(0, len(sub), self.batch_size):
                    fresh += m.measure(sub[i: i + self.batch_size])
                    bar.update(len(sub[i: i + self.batch_size]))
            bar.close()
            for k, m in zip(todo, fresh):
                got[k] = m
        # clean embeddings: fill the cross-run cache from the measures, then complete each measure from
        # it (a cached measure holds every clean embedding it uses, whatever run computed it first)
        for t, m in zip(tasks, got):
            for n, d in m.clean.items():
                for i, e in d.items():
                    self._clean_cache[(n, src_url, t.key, i)] = e
        for t, m in zip(tasks, got):
            for n, idx in t.wanted.items():
                for i in idx:
                    m.clean.setdefault(n, {}).setdefault(i, self._clean_cache.get((n, src_url, t.key, i)))
                    self._clean_cache.setdefault((n, src_url, t.key, i), m.clean[n][i])
        if store is not None and todo:
            try:
                store.add([(sigs[k], got[k].to_bytes()) for k in todo if not got[k].error])
            except Exception as e:  # noqa: BLE001 - the cache is an optimisation: a report still comes out
                notes.append(f"report cache not written ({type(e).__name__}: {e}); the next report measures again")
        return got  # type: ignore[return-value]

    def _judge(self, jd: Judge, recs: list[dict], clean: list, cloaked: list) -> tuple[dict, list[dict]]:
        """Evasion or poisoning over aligned probe lists; per-probe dicts (clean_pred, cloaked_pred, protected)."""
        ids = [self._identity(jd, r, c) for r, c in zip(recs, clean)]
        if self.mode == "evasion":
            gallery = self.galleries.get(jd.name)
            if gallery is None:  # no gallery: verification against the originals only
                return ({"mode": "evasion", "judge": jd.name, "faces": len(recs), "clean_accuracy": None,
                         "protection_rate": None, "threshold": float(jd.threshold), "metric": jd.metric},
                        [{} for _ in recs])
            res = evasion(gallery, list(zip(ids, clean, cloaked)), details=True)
            per = [{"clean_pred": f["clean_pred"], "cloaked_pred": f["cloaked_pred"],
                    "cloaked_distance": f["cloaked_distance"],
                    "protected": (not f["cloaked_ok"]) if f["clean_ok"] else None} for f in res.pop("per_face")]
            return res, per
        # poisoning: the run's cloaked photos are the enrolment, the --gallery photos are clean probes
        cloaked_g, clean_g = Gallery.for_judge(jd), Gallery.for_judge(jd)
        for ident, c, k, r in zip(ids, clean, cloaked, recs):
            if ident is None:
                continue
            if c is not None:
                clean_g.add(ident, c, r["source_key"])
            if k is not None:
                cloaked_g.add(ident, k, r["source_key"])
        enrolled = self.galleries.get(jd.name)
        if enrolled is None:
            raise ValueError(f"poisoning mode needs clean probe photos for judge {jd.name!r} (--gallery DIR)")
        probes = [(ident, e) for ident in enrolled.identities if ident in clean_g for e in enrolled.embeddings[ident]]
        res = poisoning(cloaked_g, probes, clean_gallery=clean_g, details=True)
        res.pop("per_face")
        return res, [{} for _ in recs]

    def _verify(self, jd: Judge, recs: list[dict], clean: list, cloaked: list, pairs: list | None
                ) -> tuple[dict, list[dict]]:
        """Verification of one judge: against the gallery (probes) or, given `pairs` (clean, cloaked)
        of every face, each against its own clean face. Returns (summary, per-face rows)."""
        if pairs is not None:
            res = self_verification(pairs, jd.metric, float(jd.threshold), jd.name, details=True)
        else:
            gallery = self.galleries.get(jd.name)
            if gallery is None:
                raise ValueError(f"verification against the gallery needs a gallery for judge {jd.name!r} "
                                 "(--gallery DIR, or --verify-against original)")
            ids = [self._identity(jd, r, c) for r, c in zip(recs, clean)]
            res = verification(gallery, list(zip(ids, clean, cloaked)), details=True)
        return res, res.pop("per_face")

    def _identity(self, jd: Judge, rec: dict, clean_emb: np.ndarray | None) -> str | None:
        if rec.get("identity") is not None or self.labels == "folder":
            return rec.get("identity")
        g = self.galleries.get(jd.name)
        return identify(g, clean_emb)[0] if (g is not None and clean_emb is not None) else None


def _mean_shift(clean: Sequence, cloaked: Sequence, metric: str) -> float | None:
    """Mean distance between each face's clean and cloaked embedding under the judge's metric
    (for an embedder: the cosine drop 1 - cos); faces missing either are left out."""
    from facepriv.judges import pairwise_distances

    d = [float(pairwise_distances(np.asarray(c)[None], np.asarray(k)[None], metric)[0, 0])
         for c, k in zip(clean, cloaked) if c is not None and k is not None]
    return float(np.mean(d)) if d else None
