"""`clnscl sweep`: one run per value of the factor, one figure, the final records collected."""
import json
import subprocess

import pytest

from clnscl import cli
from tests.support.processes import repo_env, torchrun

TINY = ["epochs=1", "batch_size=64", "eval_every=100", "warmup_epochs=0", "num_classes=4", "reference_size=40"]


def test_sweep_over_temperature(tmp_path, capsys):
    sets = [a for kv in TINY for a in ("--set", kv)]
    assert cli.main(["sweep", "--factor", "temperature", "--values", "0.2,0.5", *sets, "--out", str(tmp_path)]) == 0
    png = tmp_path / "sweep_temperature.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    results = json.loads((tmp_path / "sweep_temperature.json").read_text())
    assert set(results) == {"0.2", "0.5"}
    for value in ("0.2", "0.5"):
        last = json.loads((tmp_path / f"temperature={value}" / "metrics.jsonl").read_text().splitlines()[-1])
        assert results[value] == last
    assert results["0.2"]["loss_gap_bound"] > results["0.5"]["loss_gap_bound"]  # e^{2/τ} grows as τ falls


def test_bad_values_are_refused(tmp_path, capsys):
    assert cli.main(["sweep", "--factor", "batch_size", "--values", "64,big", "--out", str(tmp_path)]) == 2
    assert "--values" in capsys.readouterr().err
    assert cli.main(["sweep", "--factor", "num_classes", "--values", "3", "--out", str(tmp_path)]) == 2


@pytest.mark.distributed
def test_a_two_process_sweep_records_every_value(tmp_path):
    """Under torchrun every process runs every value (the sweep builds trainers, it does not re-enter the
    command line, whose teardown ends the process): both runs are recorded, by rank 0."""
    sets = [a for kv in TINY for a in ("--set", kv)]
    cmd = [torchrun(), "--standalone", "--nproc_per_node=2", "-m", "clnscl", "sweep", "--factor", "temperature",
           "--values", "0.2,0.5", *sets, "--out", str(tmp_path / "sweep")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=repo_env(OMP_NUM_THREADS="1", TMPDIR=str(tmp_path)))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "sweep" / "sweep_temperature.json").read_text())
    assert set(results) == {"0.2", "0.5"}
    for value in ("0.2", "0.5"):
        lines = (tmp_path / "sweep" / f"temperature={value}" / "metrics.jsonl").read_text().splitlines()
        steps = [json.loads(line)["step"] for line in lines]
        assert steps == sorted(set(steps))  # written once, by rank 0
        assert results[value] == json.loads(lines[-1])
    assert (tmp_path / "sweep" / "sweep_temperature.png").exists()
