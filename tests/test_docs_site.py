"""The docs site builds with `mkdocs build --strict` (every page in the nav, every link and cross-reference
resolved, every docstring parsed without a warning), its API reference is generated from the docstrings and its
configuration reference from the configuration's fields."""
import html
import os
import re
import subprocess
import sys
from pathlib import PurePosixPath

import pytest

from tests.support.processes import REPO


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _text(page) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_the_site_builds_strictly_with_every_page(site):
    pages = {PurePosixPath(p.relative_to(REPO / "docs").with_suffix("")) for p in (REPO / "docs").rglob("*.md")}
    for page in pages | {PurePosixPath("benchmarks"), PurePosixPath("configuration")}:
        built = site / ("index.html" if page.name == "index" else page / "index.html")
        assert built.is_file(), f"{page} was not built"


def test_the_api_reference_is_generated_from_the_docstrings(site):
    losses = _text(site / "api" / "losses" / "index.html")
    for name in ("contrastive_loss", "NTXentLoss", "ClipLoss", "MemoryBank"):
        assert name in losses
    assert "Raises" in losses and "Parameters" in losses
    metrics = _text(site / "api" / "metrics" / "index.html")
    assert "StreamingAlignment" in metrics and "pairwise_alignment" in metrics


def test_the_configuration_reference_lists_every_key(site):
    from clnscl.train.config import entries

    page = _text(site / "configuration" / "index.html")
    keys = [e["key"] for e in entries()]
    assert len(keys) > 30
    missing = [k for k in keys if k not in page]
    assert not missing, missing


def test_the_benchmarks_page_is_the_benchmarks_file(site):
    page = _text(site / "benchmarks" / "index.html")
    lines = [line for line in (REPO / "BENCHMARKS.md").read_text().splitlines()
             if line.startswith("| ") and not set(line) <= set("|- :")]
    assert len(lines) > 20
    for line in lines[::10]:  # every tenth row of its tables, cell by cell
        for cell in line.strip("| ").split(" | ")[:2]:
            assert re.sub(r"[`*]", "", cell).strip() in page, cell
