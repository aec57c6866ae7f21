"""Models of the coupled trainer: an encoder (features h), a 2-layer projector with BN (embeddings z, what the
contrastive losses see) and, used by the CE objective only, a linear classifier on the normalised z."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """Three 3×3 conv blocks with BN and a global average pool: for small images (digits 8×8, CIFAR 32×32)."""

    def __init__(self, in_channels: int, width: int = 32, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, out_dim, 3, padding=1), nn.BatchNorm2d(out_dim), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out_dim = out_dim

    def forward(self, x):
        return self.net(x)


class CoupledNet(nn.Module):
    """x -> (h, z): encoder features h and projector output z; `logits(z)` is the CE head on ẑ = z/‖z‖."""

    def __init__(self, encoder: nn.Module, feature_dim: int, hidden_dim: int, projector_dim: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, projector_dim),
        )
        self.head = nn.Linear(projector_dim, num_classes)

    def forward(self, x):
        h = self.encoder(x)
        return h, self.projector(h)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(F.normalize(z, dim=-1))


def build_model(name: str, in_channels: int, num_classes: int, hidden_dim: int, projector_dim: int) -> CoupledNet:
    if name == "small_cnn":
        encoder = SmallCNN(in_channels)
        return CoupledNet(encoder, encoder.out_dim, hidden_dim, projector_dim, num_classes)
    raise ValueError(f"model {name!r} is not available yet in this version (available: 'small_cnn')")
