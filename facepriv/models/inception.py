"""facenet-pytorch's InceptionResnetV1 with a classification head.

Pretrained weights (e.g. facenet-pytorch's vggface2 state_dict) are loaded from a local
file only; the original downloads them, which fails offline.
"""

from __future__ import annotations

import torch
from facenet_pytorch import InceptionResnetV1
from torch import nn

from facepriv.errors import CheckpointError


def load_facenet_weights(net: InceptionResnetV1, pretrained: str) -> None:
    """Load a facenet-pytorch InceptionResnetV1 state_dict (e.g. vggface2) from a local file;
    the classification head (`logits.*`) is ignored."""
    try:
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot load pretrained weights {pretrained!r}: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{pretrained!r} is not a state_dict")
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("logits.")]
    if bad or unexpected:
        raise CheckpointError(
            f"{pretrained!r} is not an InceptionResnetV1 state_dict "
            f"(missing {bad[:3]}, unexpected {list(unexpected)[:3]})"
        )


class FacenetEmbedder(nn.Module):
    """facenet-pytorch's InceptionResnetV1 as a face-embedding surrogate (512-d, L2-normalised).

    It was trained on MTCNN box crops at 160x160; the 5-point alignment approximates that with
    the loose template (face about 0.75 of the frame)."""

    input_size = 160
    kind = "embedder"
    crop = "loose224"

    def __init__(self, pretrained: str | None = None, name: str = "facenet"):
        super().__init__()
        self.name = name
        self.net = InceptionResnetV1(pretrained=None, classify=False)
        if pretrained:
            load_facenet_weights(self.net, pretrained)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x * 255.0 - 127.5) / 128.0)


class InceptionClassifier(nn.Module):
    input_size = 160
    kind = "classifier"

    def __init__(self, num_classes: int, pretrained: str | None = None, freeze_backbone: bool = False):
        super().__init__()
        self.net = InceptionResnetV1(pretrained=None, classify=True, num_classes=num_classes)
        if pretrained:
            load_facenet_weights(self.net, pretrained)
        if freeze_backbone:
            for name, p in self.net.named_parameters():
                if not name.startswith("logits"):
                    p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # facenet-pytorch's fixed_image_standardization: (x*255 - 127.5) / 128
        return self.net((x * 255.0 - 127.5) / 128.0)
