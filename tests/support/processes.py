"""Running the package in other processes: the repository on their PYTHONPATH, and torchrun."""
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUPPORT = REPO / "tests" / "support"


def repo_env(**extra: str) -> dict:
    """This process's environment with the repository first on PYTHONPATH, and `extra` set."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def gloo_env() -> dict:
    """repo_env for one-thread gloo workers, on the loopback interface (no dependence on the host name)."""
    env = repo_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def torchrun() -> str:
    """The torchrun of this Python (the test skips without one)."""
    path = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(path):
        pytest.skip("torchrun is not on PATH")
    return path
