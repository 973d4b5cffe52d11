"""facenet-pytorch's InceptionResnetV1 with a classification head.

Pretrained weights (e.g. facenet-pytorch's vggface2 state_dict) are loaded from a local
file only; the original downloads them, which fails offline.
"""

from __future__ import annotations

import torch
from facenet_pytorch import InceptionResnetV1
from torch import nn

from ..errors import CheckpointError


class InceptionClassifier(nn.Module):
    input_size = 160
    kind = "classifier"

    def __init__(self, num_classes: int, pretrained: str | None = None, freeze_backbone: bool = False):
        super().__init__()
        self.net = InceptionResnetV1(pretrained=None, classify=True, num_classes=num_classes)
        if pretrained:
            try:
                state = torch.load(pretrained, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(f"cannot load pretrained weights {pretrained!r}: {e}") from None
            state = {k: v for k, v in state.items() if not k.startswith("logits.")}
            missing, unexpected = self.net.load_state_dict(state, strict=False)
            bad = [k for k in missing if not k.startswith("logits.")]
            if bad or unexpected:
                raise CheckpointError(
                    f"{pretrained!r} is not an InceptionResnetV1 state_dict "
                    f"(missing {bad[:3]}, unexpected {list(unexpected)[:3]})"
                )
        if freeze_backbone:
            for name, p in self.net.named_parameters():
                if not name.startswith("logits"):
                    p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # facenet-pytorch's fixed_image_standardization: (x*255 - 127.5) / 128
        return self.net((x * 255.0 - 127.5) / 128.0)
