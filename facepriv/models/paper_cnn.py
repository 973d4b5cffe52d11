"""The paper's face classifier (Fig. 6): conv 8/16/32 (3x3, same padding, ReLU) with max
pooling 2, 3, 3; flatten (2048); dense 512 (ReLU); dense N. Input 160x160 RGB.
Parameter counts match the figure: 224, 1168, 4640, 1049088, 513*N.

The figure's layer table has no rescaling layer, so the paper's Keras model saw raw 0-255
pixels; this model does the same (its `[0, 1]` input is multiplied by 255 inside). The
scale matters: trained with Adam on raw pixels the network is far more sensitive to small
pixel changes than one trained on [-1, 1] inputs (measured here on lfw50: FGSM at eps 8
fools 100% of faces in memory against 81% for the [-1, 1] variant), which is the regime
the paper's numbers come from.
"""

from __future__ import annotations

import torch
from torch import nn


class PaperCNN(nn.Module):
    input_size = 160
    kind = "classifier"

    def __init__(self, num_classes: int):
        super().__init__()
        # ReLU after max pooling: relu(maxpool(x)) == maxpool(relu(x)) exactly (ReLU is monotone,
        # and where the window max is <= 0 both give 0 and a zero gradient), but ReLU then runs
        # on 4x / 9x fewer values; the module indices (and so the state_dict keys) are the same
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),    # 160 -> 80
            nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(3), nn.ReLU(),   # 80 -> 26
            nn.Conv2d(16, 32, 3, padding=1), nn.MaxPool2d(3), nn.ReLU(),  # 26 -> 8
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 8 * 8, 512), nn.ReLU(), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x * 255.0))
