"""Architecture names -> constructors."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .inception import InceptionClassifier
from .paper_cnn import PaperCNN
from .tfjs import TfjsGraph

ARCHES: dict[str, Callable[..., nn.Module]] = {
    "paper-cnn": lambda num_classes, **_: PaperCNN(num_classes),
    "inception-resnet-v1": lambda num_classes, pretrained=None, freeze_backbone=False, **_: InceptionClassifier(
        num_classes, pretrained=pretrained, freeze_backbone=freeze_backbone
    ),
    # an imported TF.js graph model (facepriv.models.tfjs); build = TfjsGraph.build_kwargs()
    "tfjs": lambda num_classes, **build: TfjsGraph(**build),
}


def build_model(arch: str, num_classes: int, **kwargs) -> nn.Module:
    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHES)}")
    return ARCHES[arch](num_classes, **kwargs)
