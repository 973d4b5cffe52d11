"""An imported face-embedding network (a facepriv checkpoint of kind "embedder", e.g. from
`facepriv models import-tfjs`) used as a judge: `--judge tfjs:mobilefacenet.pt`.

It aligns with MTCNN's 5 landmarks (`facepriv.core.align`, template from the model's `crop`)
and compares embeddings by cosine distance. Like every judge it is numpy in, numpy out,
run under `torch.inference_mode()`: it verifies cloaks and is never handed to an attack.
When it was also one of the crafting surrogates, its verdict is white-box, not independent;
the report says which judges were crafting models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from facepriv.errors import CheckpointError
from facepriv.judges.base import Face, check_image

DEFAULT_THRESHOLD = 0.6  # cosine distance (cos similarity 0.4); override per model with threshold=


class EmbedderJudge:
    metric = "cosine"

    def __init__(self, checkpoint: str, threshold: float | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 32):
        from facepriv.core.align import align_faces  # differentiable alignment, used here without gradients
        from facepriv.models.checkpoint import load_checkpoint

        loaded = load_checkpoint(checkpoint, device=device)
        kind = getattr(loaded.model, "kind", loaded.meta.get("kind"))
        if kind != "embedder":
            raise CheckpointError(
                f"{checkpoint!r} is a {kind!r} model; a judge needs an embedder checkpoint "
                "(import one with `facepriv models import-tfjs`)"
            )
        self._align = align_faces
        self.model = loaded.model
        self.device = torch.device(device)
        self.input_size = int(getattr(self.model, "input_size", loaded.meta.get("input_size", 112)))
        self.crop = getattr(self.model, "crop", None) or loaded.meta.get("crop")
        stem = loaded.meta.get("name") or os.path.splitext(os.path.basename(checkpoint))[0]
        self.name = f"tfjs:{stem}"
        self.threshold = float(threshold if threshold is not None else loaded.meta.get("judge_threshold", DEFAULT_THRESHOLD))
        self.batch_size = int(batch_size)
        self.sha256 = loaded.sha256

    def __repr__(self) -> str:
        return f"EmbedderJudge({self.name!r}, input_size={self.input_size}, crop={self.crop!r}, threshold={self.threshold})"

    def chips(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """Aligned faces as (n, S, S, 3) uint8 (what the model sees)."""
        x = self._aligned(check_image(image), faces)
        return (x.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    def _aligned(self, img: np.ndarray, faces: Sequence[Face]) -> torch.Tensor:
        t = torch.as_tensor(np.array(img, copy=True), device=self.device).permute(2, 0, 1).float().div_(255.0)
        lm = np.stack([np.asarray(f["landmarks"], np.float64).reshape(5, 2) for f in faces])
        return self._align(t, lm, self.input_size, self.crop)

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        img = check_image(image)
        if not faces:
            return np.zeros((0, 0), np.float32)
        out = []
        with torch.inference_mode():
            x = self._aligned(img, faces)
            for i in range(0, len(x), self.batch_size):
                out.append(self.model(x[i : i + self.batch_size]).float().reshape(min(self.batch_size, len(x) - i), -1))
        return torch.cat(out).cpu().numpy().astype(np.float32)
