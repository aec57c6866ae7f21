"""Every Python block of the README and the docs pages runs, page by page in order (a block may use the names of
the blocks above it), with small stand-ins for the user's own objects the text leaves to the reader (their
models, loaders, features): what the documentation shows works after `pip install -e .`."""
import os
import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.support.processes import REPO

PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


class _Encoder(nn.Module):
    """A small model with the layers the pages name (a convolution, `fc`): its features z, or (h, z) for the
    trainer, which takes either."""

    def __init__(self, pair: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 16)
        self.pair = pair

    def forward(self, x):
        h = self.conv(x).relu().mean((2, 3))
        return (h, self.fc(h)) if self.pair else self.fc(h)


def _stand_ins() -> dict:
    """The names the pages leave to the reader, as small objects of the described kinds."""
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(64, 3, 8, 8, generator=gen), torch.arange(64) % 4
    views = images[:, None].expand(64, 2, 3, 8, 8) + 0.1 * torch.randn(64, 2, 3, 8, 8, generator=gen)
    model_a, model_b = _Encoder(), _Encoder()
    return {
        "h_a": torch.randn(300, 24, generator=gen), "h_b": torch.randn(300, 40, generator=gen),
        "h_anchor": torch.randn(300, 16, generator=gen),
        "z_i": torch.randn(32, 16, generator=gen), "z_j": torch.randn(32, 16, generator=gen),
        "model_a": model_a, "model_b": model_b, "anchor": model_a, "others": [model_b],
        "loader": DataLoader(TensorDataset(images, labels), batch_size=16),
        "my_encoder": _Encoder(pair=True), "train_loader": DataLoader(TensorDataset(views, labels), batch_size=16),
        "reference": [(images[:32], labels[:32])], "probe": [(images[32:], labels[32:])],
    }


def _blocks(page: str) -> list[str]:
    return BLOCK.findall((REPO / page).read_text())


def test_the_pages_show_code():
    assert sum(len(_blocks(p)) for p in PAGES) >= 20


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)])
def test_every_python_block_of_the_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what a block writes (run directories, figures) goes here
    torch.manual_seed(0)
    names = _stand_ins()
    for i, block in enumerate(_blocks(page)):
        block = block.replace("epochs=10", "epochs=1")  # the trainer's example, one epoch of the stand-in data
        try:
            exec(compile(block, f"{page}, python block {i + 1}", "exec"), names)
        except Exception as exc:
            raise AssertionError(f"{page}, python block {i + 1}: {type(exc).__name__}: {exc}") from exc
    assert os.getcwd() == str(tmp_path)
