"""An elastic restart loses nothing: a 2-process gloo run under `torchrun --max-restarts=1 ... --resume auto`,
one worker killed (SIGKILL) once a checkpoint exists mid-run, restarts, resumes from the checkpoint and ends
with the records of an uninterrupted run — every evaluation step once, the same values."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from clnscl.train.records import without_timings
from tests.support.processes import REPO, repo_env, torchrun

pytestmark = pytest.mark.distributed

SETS = ["epochs=3", "batch_size=64", "eval_every=2", "warmup_epochs=1", "num_classes=5", "reference_size=60",
        "objectives=[cl,nscl]", "checkpoint_every=2", "device=cpu"]
TIMEOUT_S = 240


def _command(out: Path) -> list[str]:
    return [torchrun(), "--standalone", "--nproc_per_node=2", "--max-restarts=1", "-m", "clnscl", "train",
            "--out", str(out), "--resume", "auto", *[a for kv in SETS for a in ("--set", kv)]]


def _workers(pid: int) -> list[int]:
    """The clnscl processes whose parent is `pid` (from /proc): torchrun's workers."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"clnscl" in command:
            kids.append(int(stat.parent.name))
    return kids


def _records(out: Path) -> list[dict]:
    return [without_timings(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc")
def test_a_killed_worker_restarts_and_the_run_ends_with_every_record_once(tmp_path):
    env = repo_env(OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    whole = subprocess.run(_command(tmp_path / "whole"), capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
                           cwd=str(REPO))
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "killed"
    log = open(tmp_path / "killed.log", "w")
    agent = subprocess.Popen(_command(out), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    deadline, killed_at = time.monotonic() + TIMEOUT_S, None
    try:
        while killed_at is None and agent.poll() is None and time.monotonic() < deadline:
            if (out / "checkpoint.pt").exists():
                workers = _workers(agent.pid)
                if len(workers) == 2:
                    killed_at = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
                    os.kill(max(workers), signal.SIGKILL)
                    break
            time.sleep(0.02)
        agent.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if agent.poll() is None:
            agent.kill()
        log.close()
    text = (tmp_path / "killed.log").read_text()
    assert killed_at is not None, "no worker was killed (the run ended first?)\n" + text[-3000:]
    total = _records(tmp_path / "whole")[-1]["step"]
    assert killed_at < total, f"the kill came after the last step ({killed_at} of {total}): not mid-run"
    assert agent.returncode == 0, text[-3000:]
    got, want = _records(out), _records(tmp_path / "whole")
    assert [r["step"] for r in got] == [r["step"] for r in want]  # none lost, none twice
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key, value in w.items():
            assert g[key] == (pytest.approx(value, rel=1e-5, abs=1e-7) if isinstance(value, float) else value), key
