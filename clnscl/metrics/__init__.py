"""Alignment and class geometry of representations: streaming Gram statistics (streaming.py), CKA / RSA /
similarity gaps (alignment.py, with the pairwise engine of pairwise.py and the materialised reference.py),
models streamed over a DataLoader (features.py), every layer of one model against every layer of another
(layers.py), class geometry (geometry.py), probes (probes.py), the quantities of two coupled models
(coupling.py) and a paired bootstrap of two models' alignment with an anchor (compare.py)."""
from .alignment import cka, pairwise_alignment, rsa, similarity_gap
from .compare import compare
from .coupling import loss_gap_bound, weight_divergence
from .features import align_models, extract_features
from .geometry import cdnv, directional_cdnv
from .layers import LayerAlignment, layer_alignment
from .probes import knn_accuracy, linear_probe_accuracy, nccc_accuracy
from .streaming import StreamingAlignment

__all__ = [
    "LayerAlignment", "StreamingAlignment", "cka", "compare", "pairwise_alignment", "rsa", "similarity_gap",
    "align_models", "extract_features", "cdnv", "directional_cdnv", "knn_accuracy", "linear_probe_accuracy",
    "loss_gap_bound", "nccc_accuracy", "weight_divergence", "layer_alignment",
]
