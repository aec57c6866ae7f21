"""Models of the coupled trainer: an encoder (features h), a 2-layer projector with BN (embeddings z, what the
contrastive losses see) and, used by the CE objective only, a linear classifier on the normalised z."""
from __future__ import annotations

import math

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


def resnet(name: str, in_channels: int, small_images: bool) -> tuple[nn.Module, int]:
    """torchvision's ResNet-18/50 without its classifier; for small images (≤ 64 px) the CIFAR stem: a 3×3
    stride-1 first convolution and no max-pool."""
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError(f"model {name!r} needs torchvision: pip install 'clnscl[vision]'") from exc
    net = getattr(torchvision.models, name)(weights=None)
    if small_images or in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 3 if small_images else 7, stride=1 if small_images else 2,
                              padding=1 if small_images else 3, bias=False)
    if small_images:
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


VIT_SIZES = {"vit_tiny": (192, 3, 768), "vit_small": (384, 6, 1536), "vit_base": (768, 12, 3072)}  # 12 layers


def vit(name: str, in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    """torchvision's VisionTransformer returning the class-token features; patch 16 for images above 64 px,
    else 4, or 2 below 16 px (digits 8×8: 16 tokens)."""
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError(f"model {name!r} needs torchvision: pip install 'clnscl[vision]'") from exc
    patch = 16 if image_size > 64 else 4 if image_size >= 16 else 2
    if image_size % patch:
        raise ValueError(f"model {name!r}: image_size {image_size} is not divisible by its patch size {patch}")
    dim, heads, mlp = VIT_SIZES[name]
    net = torchvision.models.VisionTransformer(image_size, patch, 12, heads, dim, mlp)
    if in_channels != 3:
        net.conv_proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        nn.init.trunc_normal_(net.conv_proj.weight, std=math.sqrt(1 / (in_channels * patch * patch)))
        nn.init.zeros_(net.conv_proj.bias)  # torchvision's initialisation of conv_proj
    net.heads = nn.Identity()
    return net, dim


def build_model(name: str, in_channels: int, num_classes: int, hidden_dim: int, projector_dim: int,
                image_size: int = 8) -> CoupledNet:
    if name == "small_cnn":
        encoder, dim = SmallCNN(in_channels), 128
    elif name in ("resnet18", "resnet50"):
        encoder, dim = resnet(name, in_channels, small_images=image_size <= 64)
    elif name in VIT_SIZES:
        encoder, dim = vit(name, in_channels, image_size)
    else:
        raise ValueError(f"model {name!r} is not available "
                         f"(choices: small_cnn, resnet18, resnet50, {', '.join(VIT_SIZES)})")
    return CoupledNet(encoder, dim, hidden_dim, projector_dim, num_classes)


def encoder_blocks(model: CoupledNet, name: str) -> tuple[list[str], str]:
    """The modules a per-layer alignment compares — the encoder's blocks (the small CNN's three conv stages,
    ResNet's residual blocks, ViT's encoder layers), then the encoder (h) and the projector (z) — and the
    pooling that makes their outputs vectors (channels for CNNs, the mean token for ViTs)."""
    if name == "small_cnn":
        blocks = [f"encoder.net.{i}" for i in (2, 5, 8)]
    elif name in ("resnet18", "resnet50"):
        blocks = [f"encoder.{stage}.{i}" for stage, layer in model.encoder.named_children()
                  if stage.startswith("layer") for i in range(len(layer))]
    elif name in VIT_SIZES:
        blocks = [f"encoder.encoder.layers.{n}" for n, _ in model.encoder.encoder.layers.named_children()]
    else:
        raise ValueError(f"model {name!r}: no block list for the per-layer alignment")
    return blocks + ["encoder", "projector"], "tokens" if name in VIT_SIZES else "avg"
