"""`clnscl sweep`: one run per value of the factor, one figure, the final records collected."""
import json

from clnscl import cli

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
