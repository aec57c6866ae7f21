"""The examples run as a user would run them: `python examples/NAME.py`, from a directory of their own."""
import json
import subprocess
import sys

from tests.support.processes import REPO, repo_env


def test_coupled_own_model_example_trains_into_its_run_directory(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "coupled_own_model.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=repo_env(OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = tmp_path / "runs" / "own_model"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 40, 80, 120, 160]
    last = records[-1]
    assert 0 < last["cka_cosine/nscl"] <= 1 and last["loss_gap"] <= last["loss_gap_bound"]
    assert (run / "checkpoint.pt").is_file() and (run / "summary.md").read_text().strip() in done.stderr
