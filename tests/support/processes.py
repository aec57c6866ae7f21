"""Running the package in other processes: the repository on their PYTHONPATH, and torchrun."""
import os
import shutil
import subprocess
import sys
import textwrap
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


WORKER_FRAME = """
import datetime, json, os, sys
rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
code = 1
try:
    import torch, torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
{body}
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    code = 0
except BaseException:
    import traceback
    traceback.print_exc()
sys.stdout.flush(); sys.stderr.flush()
os._exit(code)
"""


def run_gloo_workers(body: str, world: int, tmp_path: Path, timeout: float = 120.0) -> list:
    """Run `body` (Python source that sets `result`, a JSON-able value, from `rank`, `world`, `torch` and `dist`
    on an initialised gloo group) as `world` processes from the repository; every rank's `result`, in rank
    order. Fails the test, with every rank's log, if one hangs (all are killed after `timeout` seconds) or
    exits non-zero."""
    import json

    worker = tmp_path / "worker.py"
    worker.write_text(WORKER_FRAME.format(body=textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")))
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
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
