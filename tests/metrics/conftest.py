"""Fixtures of the metrics tests."""
import pytest
import torch


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def small_blocks(monkeypatch):
    """Force many row blocks, so the chunked paths are the ones tested."""
    from clnscl.metrics import geometry

    monkeypatch.setattr(geometry, "BLOCK_ELEMS", 64)
