"""Alignment and class-geometry metrics between representations (DESIGN.md §3)."""
from ._gram import StreamingAlignment
from .alignment import cka, rsa, similarity_gap
from .features import align_models, extract_features
from .geometry import (
    cdnv,
    directional_cdnv,
    knn_accuracy,
    linear_probe_accuracy,
    loss_gap_bound,
    nccc_accuracy,
    weight_divergence,
)

__all__ = [
    "StreamingAlignment", "cka", "rsa", "similarity_gap", "align_models", "extract_features", "cdnv",
    "directional_cdnv", "knn_accuracy", "linear_probe_accuracy", "loss_gap_bound", "nccc_accuracy",
    "weight_divergence",
]
