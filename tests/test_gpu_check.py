"""scripts/gpu_check.sh cannot rot without a GPU: its dry run (every step on the CPU at tiny sizes, the GPU
tests collected but not run) exits 0, and its loss table has every method and part with no error."""
import subprocess
import sys

from benchmarks.loss.gpu_bench import PARTS, VARIANTS
from tests.support.processes import REPO, repo_env


def test_gpu_check_dry_run_runs_every_step(tmp_path):
    env = repo_env(GPU_CHECK_LOGS=str(tmp_path), PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)  # the script sets up the interpreter itself, as on a machine without a GPU
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    for step in ("info", "ops_load", "gpu_tests", "gpu_metrics", "gpu_bench"):
        assert f"| {step} | ok |" in log, log[-4000:]
    table = (tmp_path / "gpu_bench.md").read_text()
    assert "DRY RUN" in table
    assert "| cuda | 64 | — |" in table  # no CUDA device here: reported, not measured
    for variant in (v for v in VARIANTS if v != "cuda"):
        for part in PARTS:
            assert f"| {variant} | 64 | {part} |" in table, f"no {variant} {part} row:\n{table}"
    assert "ERROR" not in table and "FAIL" not in table, table
