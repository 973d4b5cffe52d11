"""The paper's face classifier (Fig. 6): conv 8/16/32 (3x3, same padding, ReLU) with max
pooling 2, 3, 3; flatten (2048); dense 512 (ReLU); dense N. Input 160x160 RGB.
Parameter counts match the figure: 224, 1168, 4640, 1049088, 513*N.
"""

from __future__ import annotations

import torch
from torch import nn


class PaperCNN(nn.Module):
    input_size = 160
    kind = "classifier"

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 160 -> 80
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3),   # 80 -> 26
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3),  # 26 -> 8
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 8 * 8, 512), nn.ReLU(), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((x - 0.5) / 0.5))
