"""Alignment metrics between representations (DESIGN.md §3)."""
from ._gram import StreamingAlignment
from .alignment import cka, rsa, similarity_gap

__all__ = ["StreamingAlignment", "cka", "rsa", "similarity_gap"]
