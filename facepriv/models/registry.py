"""Architecture names -> constructors."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from facepriv.models.inception import FacenetEmbedder, InceptionClassifier
from facepriv.models.paper_cnn import PaperCNN
from facepriv.models.tfjs.graph import TfjsGraph

ARCHES: dict[str, Callable[..., nn.Module]] = {
    "paper-cnn": lambda num_classes, **_: PaperCNN(num_classes),
    "inception-resnet-v1": lambda num_classes, pretrained=None, freeze_backbone=False, **_: InceptionClassifier(
        num_classes, pretrained=pretrained, freeze_backbone=freeze_backbone
    ),
    # facenet-pytorch InceptionResnetV1 embeddings (weights from a local file at import; then in the checkpoint)
    "facenet-embedder": lambda num_classes, name="facenet", **_: FacenetEmbedder(None, name=name),
    # an imported TF.js graph model (facepriv.models.tfjs); build = TfjsGraph.build_kwargs()
    "tfjs": lambda num_classes, **build: TfjsGraph(**build),
}


def build_model(arch: str, num_classes: int, **kwargs) -> nn.Module:
    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHES)}")
    return ARCHES[arch](num_classes, **kwargs)
