"""The clean --gallery each judge identifies against, enrolled once and kept in the report cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from facepriv.errors import UsageError
from facepriv.io.archive import Archive, storage_options


def enrol(s: Any, judges: Sequence[Any], cache_archive: Archive | None, prefix: str,
          log: Callable[[str], None], notes: list[str], specs: Sequence[str] | None = None,
          remote: Any = None) -> dict[str, Any]:
    """The clean --gallery enrolled by every judge: from the report cache when the folder
    (names, sizes, modification times), the selection and the judge are unchanged; else each
    photo detected once and embedded by every judge still to enrol, then cached. The photos are
    enrolled in Ray workers (`remote.enrol_on_ray`, judges built there from `specs`, the specs
    `judges` came from, in order) when `s.workers` asks for them (None: auto, from 48 photos),
    else in this process."""
    import fsspec

    from facepriv.report import cache

    so = storage_options(s.gallery, s.s3_endpoint, s.retries)
    sel = (lambda f: f[: s.gallery_per_identity]) if s.gallery_per_identity else None
    paths: dict[str, str] = {}
    got: dict[str, Any] = {}
    if cache_archive is not None:
        fs, base = fsspec.core.url_to_fs(s.gallery, **so)
        if not fs.isdir(base):
            raise UsageError(f"--gallery {s.gallery!r} not found (expected DIR/<identity>/<photos>)")
        listing = cache.gallery_listing_signature(fs, base, s.gallery_per_identity)
        for j in judges:
            paths[j.name] = (f"{prefix}{cache.CACHE}/galleries/{cache.safe_name(j.name)}-"
                             f"{cache.signature(listing, cache.judge_identity(j), cache.VERSION)}.npz")
            g = cache.load_gallery(cache_archive, paths[j.name])
            if g is not None:
                got[j.name] = g
                log(f"gallery {s.gallery} for judge {j.name}: from the report cache ({len(g)} photos)")
    todo = [j for j in judges if j.name not in got]
    if todo:
        got.update(_enrol(s, judges, todo, specs, remote, sel, so, log))
        for j in todo:
            if cache_archive is not None:
                try:
                    cache.save_gallery(cache_archive, paths[j.name], got[j.name])
                except Exception as e:  # noqa: BLE001 - the cache is an optimisation
                    notes.append(f"gallery cache not written ({type(e).__name__}: {e})")
    for j in judges:
        g = got[j.name]
        log(f"  {j.name}: {len(g.identities)} identities, {len(g)} photos enrolled, {len(g.skipped)} skipped")
        if g.skipped:
            notes.append(f"gallery ({j.name}): {len(g.skipped)} photo(s) not enrolled, e.g. {g.skipped[0]}")
    return {j.name: got[j.name] for j in judges}


def _enrol(s: Any, judges: Sequence[Any], todo: Sequence[Any], specs: Sequence[str] | None, remote: Any, sel,
           so: dict, log: Callable[[str], None]) -> dict[str, Any]:
    import sys

    from tqdm import tqdm

    from facepriv.judges import enrol_batches, galleries_of, gallery_photos
    from facepriv.report.measure import EnrolSpec, ray_workers

    try:
        fs, photos = gallery_photos(s.gallery, sel, so)
    except FileNotFoundError as e:
        raise UsageError(f"--gallery: {e}") from None
    workers = ray_workers(getattr(s, "workers", 0), len(photos))
    batch = max(1, int(getattr(s, "batch_size", 8) or 8))
    on_ray = workers > 1 and remote is not None and specs is not None and len(photos) > batch
    log(f"enrolling {len(photos)} photos of {s.gallery} with judge(s) {', '.join(j.name for j in todo)}"
        + (f" in {workers} Ray workers" if on_ray else "") + " ...")
    bar = tqdm(total=len(photos), desc=f"enrolling {len(photos)} gallery photos", unit="photo",
               disable=not getattr(s, "progress", True), file=sys.stderr)
    if on_ray:
        by_name = {j.name: sp for j, sp in zip(judges, specs)}
        spec = EnrolSpec(s.gallery, [by_name[j.name] for j in todo], getattr(s, "device", None) or "cpu",
                         s.s3_endpoint, s.retries)
        results = remote.enrol_on_ray(spec, photos, [j.name for j in todo], workers, batch,
                                      getattr(s, "address", None), on_done=bar.update)
    else:
        results = enrol_batches(fs.cat_file, photos, todo, batch=batch, progress=bar.update)
    bar.close()
    return galleries_of(todo, results)
