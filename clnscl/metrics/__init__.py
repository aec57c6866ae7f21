"""Alignment metrics between representations (DESIGN.md §3)."""
from ._gram import StreamingAlignment
from .alignment import cka, rsa, similarity_gap
from .features import align_models, extract_features

__all__ = ["StreamingAlignment", "cka", "rsa", "similarity_gap", "align_models", "extract_features"]
