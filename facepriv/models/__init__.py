"""Surrogate recognisers. Every model takes RGB pixels in [0, 1], NCHW, at `model.input_size`;
normalisation lives inside the model. Classifiers return logits; embedders return embeddings.
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .registry import ARCHES, build_model

__all__ = ["ARCHES", "build_model", "load_checkpoint", "save_checkpoint", "CheckpointError"]
