"""ruff (configured in pyproject.toml: pycodestyle, pyflakes, import order, lines of 120) is clean on the whole
repository; the test extra installs it."""
import subprocess
import sys

import pytest

from tests.support.processes import REPO


def test_ruff_is_clean():
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[test]')")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
