"""The convolutional branch of `dnn.architecture: conv` (beyond the paper).

The paper's network sees a window of T frames x n_bins bins as n_bins * T separate inputs, so what it
learns about a harmonic at one bin says nothing about the same shape a few bins higher: with two
training singers it learns their pitch ranges. This branch slides filters along frequency instead,
with the window's T frames as the input channels (each filter sees every frame of the window at once,
as the paper's layers do, but only a few neighbouring bins):

    x (batch, n_bins, T) -> (batch, T, n_bins)
    h_0 = relu(conv_k(x))                                  T -> C channels, k bins wide
    h_l = h_(l-1) + relu(conv_3,d(h_(l-1))),  d = 2^(l-1)   C -> C, dilated: l layers see 2^(l+1) bins
    logits = conv_1(h_L)                                   C -> T channels, one logit per bin and frame

The dilations make the reach grow with depth at a fixed cost: 6 layers span about 128 bins (2 kHz
at 16 kHz / 1024 points), several harmonics of a sung note. The branch's logits are added to the
dense network's, so the dense layers keep the window's global view (Chandna et al. 2017 pair
convolutions along each axis with a dense bottleneck for the same reason).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBranch(nn.Module):
    """Mixture window (batch, n_bins, T), already compressed as the dense layers see it -> logits of
    the same shape."""

    def __init__(self, n_frames: int, channels: int, n_layers: int, first_width: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv1d(n_frames, channels, first_width, padding=first_width // 2)
        self.blocks = nn.ModuleList(
            nn.Conv1d(channels, channels, 3, padding=2**layer, dilation=2**layer) for layer in range(n_layers)
        )
        self.head = nn.Conv1d(channels, n_frames, 1)
        # Start from zero logits: at initialisation the network is the dense one, and the branch adds
        # only what training finds it can.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(windows.transpose(1, 2)))
        for block in self.blocks:
            h = h + torch.relu(block(h))
        return self.head(h).transpose(1, 2)
