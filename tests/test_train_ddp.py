"""`torchrun -m clnscl train` with 2 CPU processes on gloo: DDP models, global negatives, rank 0 writes."""
import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.distributed


def test_two_process_training_writes_one_run(tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun is not on PATH")
    sets = ["epochs=2", "batch_size=64", "eval_every=4", "warmup_epochs=1", "num_classes=5", "reference_size=60"]
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "clnscl", "train", "--out", str(tmp_path / "run"),
           *[a for kv in sets for a in ("--set", kv)]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)) and len(steps) >= 2  # written once, by rank 0
    last = records[-1]
    assert all(last[f"loss/{m}"] == last[f"loss/{m}"] for m in ("cl", "nscl", "supcon", "ce"))  # not NaN
    assert last["loss_gap"] <= last["loss_gap_bound"]
    assert (tmp_path / "run" / "checkpoint.pt").exists() and (tmp_path / "run" / "alignment.png").exists()
