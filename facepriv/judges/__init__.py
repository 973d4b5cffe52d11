"""Judges: face recognisers that verify cloaks and never craft them.

    judge = get_judge("dlib")                      # dlib ResNet, euclidean, 0.6 ("sface": SFace ONNX, cosine)
    gallery = Gallery.from_folder("train/", judge, select=lambda files: files[:10])
    emb = judge.embed(rgb, faces)                  # faces: [{"box", "landmarks"}, ...]
    evasion(gallery, [(identity, clean_emb, cloaked_emb), ...])

Registry: `get_judge(spec)` where spec is a registered name ("dlib", "sface") or "PREFIX:ARG" with a
registered prefix ("tfjs:model.pt" / "embedder:model.pt" -> an imported embedding checkpoint
judging through `facepriv.core.align`; "embedder:mobilefacenet" -> an installed surrogate). Add others with `register_judge(name, factory)`; a factory
takes the part after the colon (or None) plus keyword options and returns a `Judge`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from facepriv.errors import UsageError
from facepriv.judges.base import (
    Face,
    Gallery,
    Judge,
    central_face,
    embed_central,
    evasion,
    enrol_batches,
    enrol_photos,
    faces_from_detection,
    galleries_from_folder,
    galleries_of,
    gallery_photos,
    identify,
    identify_many,
    pairwise_distances,
    poisoning,
    recognised,
)
from facepriv.judges.verification import AGAINST, self_verification, verification

JudgeFactory = Callable[..., Judge]
JUDGES: dict[str, JudgeFactory] = {}


def register_judge(name: str, factory: JudgeFactory) -> None:
    """Register `factory(arg: str | None, **options) -> Judge` under `name` (used as "name" or "name:arg")."""
    JUDGES[name] = factory


def _dlib(arg: str | None = None, **options: Any) -> Judge:
    from facepriv.judges.dlib_judge import DlibJudge

    return DlibJudge(model_dir=arg or options.pop("model_dir", None), **options)


def _embedder(arg: str | None = None, **options: Any) -> Judge:
    if not arg:
        raise UsageError("an embedder judge needs a checkpoint: --judge tfjs:PATH/TO/model.pt")
    from facepriv.models import store
    from facepriv.judges.embedder_judge import EmbedderJudge

    return EmbedderJudge(store.resolve(arg), **options)  # an installed name or a checkpoint path


def _sface(arg: str | None = None, **options: Any) -> Judge:
    from facepriv.judges.sface_judge import SFaceJudge

    return SFaceJudge(model=arg or options.pop("model", None), **options)  # "sface:PATH.onnx" overrides the file


register_judge("dlib", _dlib)
register_judge("sface", _sface)
register_judge("tfjs", _embedder)
register_judge("embedder", _embedder)


def get_judge(spec: str, **options: Any) -> Judge:
    """"dlib" or "tfjs:model.pt" (any registered name, optionally ":ARG") -> a Judge instance."""
    name, _, arg = spec.partition(":")
    if name not in JUDGES:
        raise UsageError(f"unknown judge {spec!r}; choose one of {sorted(JUDGES)} (e.g. 'dlib', 'tfjs:model.pt')")
    return JUDGES[name](arg or None, **options)


__all__ = [
    "Face", "Gallery", "JUDGES", "Judge", "central_face", "embed_central", "enrol_batches", "enrol_photos", "evasion",
    "faces_from_detection", "galleries_from_folder", "galleries_of", "gallery_photos", "get_judge", "identify", "identify_many", "pairwise_distances", "poisoning", "recognised",
    "register_judge",
    "AGAINST", "self_verification", "verification",
]
