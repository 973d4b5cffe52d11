"""The clean --gallery each judge identifies against, enrolled once and kept in the report cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from facepriv.errors import UsageError
from facepriv.io.archive import Archive, storage_options


def enrol(s: Any, judges: Sequence[Any], cache_archive: Archive | None, prefix: str,
          log: Callable[[str], None], notes: list[str]) -> dict[str, Any]:
    """The clean --gallery enrolled by every judge: from the report cache when the folder
    (names, sizes, modification times), the selection and the judge are unchanged; else each
    photo detected once and embedded by every judge still to enrol, then cached."""
    import fsspec

    from facepriv.judges import galleries_from_folder
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
        log(f"enrolling {s.gallery} with judge(s) {', '.join(j.name for j in todo)} ...")
        got.update(galleries_from_folder(s.gallery, todo, select=sel, storage_options=so))
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
