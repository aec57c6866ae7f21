"""Seeded generators per test case: fresh inputs for every case, the same ones on every run."""
import zlib

import torch


def gen_for(*key) -> torch.Generator:
    """A torch generator seeded from the test's parameters."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def seeded(seed: int) -> torch.Generator:
    """A torch generator seeded with `seed`."""
    return torch.Generator().manual_seed(seed)
