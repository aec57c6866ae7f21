"""Running the package in other processes: the repository on their PYTHONPATH, and torchrun."""
import os
import shutil
import subprocess
import sys
import time
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


def run_gloo_workers(script: str, world: int, tmp_path: Path, timeout: float = 120.0) -> None:
    """Run the Python source `script` as `world` processes (argv: rank, world, FileStore path, tmp_path) from
    the repository, each writing its results under tmp_path; fail the test, with every rank's log, if one hangs
    (all are killed after `timeout` seconds) or exits non-zero."""
    worker = tmp_path / "worker.py"
    worker.write_text(script)
    procs, logs = [], []
    for rank in range(world):
        logs.append(tmp_path / f"rank{rank}.log")
        with open(logs[-1], "wb") as fh:
            cmd = [sys.executable, str(worker), str(rank), str(world), str(tmp_path / "store"), str(tmp_path)]
            procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=gloo_env(), cwd=str(REPO)))
    deadline, hung = time.monotonic() + timeout, False
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            hung = True
    if hung:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    text = "\n".join(f"--- rank {r} (exit {p.returncode}):\n{logs[r].read_text(errors='replace')[-3000:]}"
                     for r, p in enumerate(procs))
    assert not hung, f"the gloo group hung (killed after {timeout:.0f} s)\n" + text
    assert all(p.returncode == 0 for p in procs), text
