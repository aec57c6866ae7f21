"""`clnscl report`: figures, the summary table and the paper-findings lines on synthetic and real runs."""
import json
import math
import runpy
import struct
import sys

import pytest

pytest.importorskip("matplotlib")

from clnscl import cli  # noqa: E402
from clnscl.train.report import FIGURES, main, read_metrics, summary, write_report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMPARED = ("nscl", "supcon", "ce")


def _record(step, *, cka, rsa, wdiv, gap=0.1, bound=2.0):
    """One record shaped like CoupledTrainer's, with the given per-model CKA cosine, RSA and weight distance."""
    rec = {"step": step, "epoch": step / 10, "time": 0.1 * step}
    for i, m in enumerate(("cl", *COMPARED)):
        rec[f"loss/{m}"] = 5.0 - 0.1 * step + i
    for m in COMPARED:
        for prefix, shift in (("", 0.0), ("h/", 0.01)):
            rec[f"{prefix}cka_cosine/{m}"] = min(1.0, cka[m] + shift)
            rec[f"{prefix}cka_linear/{m}"] = min(1.0, cka[m] + shift - 0.002)
            rec[f"{prefix}rsa_pearson/{m}"] = min(1.0, rsa[m] + shift)
            rec[f"{prefix}gap_relative/{m}"] = 0.01 * step
        rec[f"weight_div/{m}"] = wdiv[m]
    rec["loss_gap"], rec["loss_gap_bound"] = gap, bound
    for i, m in enumerate(("cl", *COMPARED)):
        rec[f"nccc/{m}"] = 0.5 + 0.01 * step + 0.001 * i
        rec[f"knn/{m}"] = 0.6 + 0.01 * step + 0.002 * i
    rec["anchor"] = "cl"
    return rec


def _records(n=4, **override):
    """A run where every finding holds; `override` maps (step index) -> dict of keys to replace."""
    recs = []
    for i in range(n):
        recs.append(_record(
            (i + 1) * 10,
            cka={"nscl": 0.99 - 0.005 * i, "supcon": 0.95 - 0.05 * i, "ce": 0.9 - 0.08 * i},
            rsa={"nscl": 0.98 - 0.004 * i, "supcon": 0.93 - 0.05 * i, "ce": 0.85 - 0.07 * i},
            wdiv={"nscl": 1e-3 * 4 ** i, "supcon": 5e-3 * 3 ** i, "ce": 1e-2 * 3 ** i},
            gap=0.1 + 0.02 * i,
        ))
    for i, keys in override.items():
        recs[int(i)].update(keys)
    return recs


def _write(run, records, tail=""):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return run


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, (path, len(data))  # a blank canvas compresses to far less
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 300 and height >= 200, (path, width, height)
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.std() > 0.01, path  # not a single flat colour


def _finding(text, n):
    [line] = [line for line in text.splitlines() if line.startswith(f"- ({n}) ")]
    return line


def test_synthetic_run_figures_table_and_findings(tmp_path):
    recs = _records()
    text = write_report(_write(tmp_path / "run", recs))
    for name in FIGURES:
        _check_png(tmp_path / "run" / name)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")}
    assert set(rows) == {"cl (anchor)", *COMPARED}
    last = recs[-1]
    for m in COMPARED:
        final_cka, min_cka, final_rsa, wdiv, nccc, knn = rows[m]
        assert final_cka == f"{last[f'cka_cosine/{m}']:.4f}"
        assert min_cka == f"{min(r[f'cka_cosine/{m}'] for r in recs):.4f}"
        assert final_rsa == f"{last[f'rsa_pearson/{m}']:.4f}"
        assert math.isclose(float(wdiv), last[f"weight_div/{m}"], rel_tol=5e-3)
        assert nccc == f"{last[f'nccc/{m}']:.4f}" and knn == f"{last[f'knn/{m}']:.4f}"
    assert rows["cl (anchor)"][-2:] == [f"{last['nccc/cl']:.4f}", f"{last['knn/cl']:.4f}"]
    for n in (1, 2, 3):
        assert _finding(text, n).startswith(f"- ({n}) holds:"), _finding(text, n)
    assert f"{last['cka_cosine/nscl']:.4f}" in _finding(text, 1)
    assert "0.001 → 0.064" in _finding(text, 2)
    assert "loss gap 0.1600 vs bound 2.0000" in _finding(text, 3)


@pytest.mark.parametrize("n, override", [
    # (1) SupCon ends more aligned (CKA) than NSCL
    (1, {3: {"cka_cosine/supcon": 0.999}}),
    # (1) CE ends with a higher RSA than NSCL, CKA unchanged
    (1, {3: {"rsa_pearson/ce": 0.999}}),
    # (2) NSCL's weights end closer to the anchor than after the first evaluation
    (2, {3: {"weight_div/nscl": 1e-4}}),
    # (2) NSCL's alignment drops below the fixed threshold at one evaluation
    (2, {1: {"cka_cosine/nscl": 0.85}}),
    # (3) the gap exceeds the bound at one evaluation
    (3, {2: {"loss_gap": 2.5}}),
    # (3) a NaN gap cannot be shown to stay within the bound
    (3, {1: {"loss_gap": float("nan")}}),
])
def test_each_finding_flips_when_violated(n, override):
    text = summary(_records(**{str(k): v for k, v in override.items()}))  # write_report's text, no figures
    for k in (1, 2, 3):
        expect = "does not hold" if k == n else "holds"
        assert _finding(text, k).startswith(f"- ({k}) {expect}:"), _finding(text, k)


def test_findings_not_applicable_without_nscl(tmp_path):
    recs = [{k: v for k, v in r.items() if not k.endswith("/nscl")} for r in _records()]
    text = write_report(_write(tmp_path / "a", recs))
    assert "nscl" not in text.split("Paper findings")[0]
    assert _finding(text, 1).startswith("- (1) not applicable:")
    assert _finding(text, 2).startswith("- (2) not applicable:")
    assert _finding(text, 3).startswith("- (3) holds:")
    # a single evaluation without nscl: (2) still lacks its model, (3) lacks evaluations
    text = write_report(_write(tmp_path / "b", recs[:1]))
    assert _finding(text, 2).startswith("- (2) not applicable:")
    assert _finding(text, 3).startswith("- (3) not informative:")


def test_truncated_last_line_is_skipped_with_a_note(tmp_path):
    recs = _records()
    run = _write(tmp_path / "run", recs, tail=json.dumps(_records(n=5)[-1])[:57])
    text = write_report(run)
    assert "truncated last line (5)" in text
    assert "4 evaluation(s), final step 40" in text
    for name in FIGURES:
        _check_png(run / name)
    # a bad line that is not the last one is an error naming the file and the line
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:30]
    (run / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2"):
        write_report(run)


def test_missing_and_empty_files_name_the_file(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope" / "metrics.jsonl")):
        write_report(tmp_path / "nope")
    run = tmp_path / "empty"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=str(run / "metrics.jsonl")):
        write_report(run)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss/cl"')  # only a truncated line
    with pytest.raises(ValueError, match="no evaluation records"):
        read_metrics(run / "metrics.jsonl")
    assert main([str(tmp_path / "nope")]) == 2
    assert str(tmp_path / "nope" / "metrics.jsonl") in capsys.readouterr().err


def test_degenerate_values_still_draw(tmp_path):
    # a zero weight distance (log axis), an infinite bound (single-class batch) and a NaN CKA
    recs = _records(**{"0": {"weight_div/nscl": 0.0, "loss_gap_bound": math.inf}, "2": {"cka_cosine/ce": math.nan}})
    text = write_report(_write(tmp_path / "run", recs))
    for name in FIGURES:
        _check_png(tmp_path / "run" / name)
    assert "non-positive or NaN value(s) of weight_div/nscl" in text
    assert "infinite or NaN loss-gap bound" in text
    assert _finding(text, 3).startswith("- (3) holds:")


@pytest.mark.filterwarnings("ignore:'clnscl.train.report' found in sys.modules:RuntimeWarning")
def test_real_tiny_run_and_module_entry_point(tmp_path, monkeypatch, capsys):
    run = tmp_path / "real"
    assert cli.main(["train", "--out", str(run), "--set", "epochs=2", "--set", "batch_size=64",
                     "--set", "eval_every=4", "--set", "warmup_epochs=1"]) == 0
    text = write_report(run)
    for name in FIGURES:
        _check_png(run / name)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for m in ("cl", "nscl", "supcon", "ce"):
        assert f"| {m}" in text
    assert f"{recs[-1]['cka_cosine/nscl']:.4f}" in text
    assert f"final step {recs[-1]['step']}" in text
    for n in (1, 2, 3):
        assert _finding(text, n).split(":")[0].split(") ")[1] in ("holds", "does not hold")
    capsys.readouterr()
    # `python -m clnscl.train.report DIR`, in process
    monkeypatch.setattr(sys, "argv", ["report", str(run)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("clnscl.train.report", run_name="__main__")
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert printed.strip() == text.strip()
    assert (run / "summary.md").read_text() == printed
