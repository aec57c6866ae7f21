"""Fixtures of the trainer tests."""
import pytest


@pytest.fixture(scope="module")
def digits():
    """The embedded digits (images, labels)."""
    pytest.importorskip("sklearn")
    from clnscl.train.datasets import load_digits_dataset

    return load_digits_dataset()
