"""A directory holding a run is never written over by accident: `clnscl train --out DIR` on it is refused
(the records and checkpoint byte for byte intact) unless --resume, --resume auto or --overwrite says what to
do; --resume auto continues a killed run to an uninterrupted run's records and starts an empty directory
afresh; clnscl sweep passes the flags to every run."""
import json

import pytest

from clnscl import cli
from clnscl.train.config import load_config
from clnscl.train.loop import CoupledTrainer
from clnscl.train.records import without_timings
from clnscl.train.run import continues

TINY = ["epochs=1", "batch_size=64", "eval_every=4", "warmup_epochs=0", "num_classes=5", "reference_size=60",
        "objectives=[cl,nscl]"]


def _sets(extra=()):
    return [a for kv in [*TINY, *extra] for a in ("--set", kv)]


def _records(run):
    strip = without_timings
    return [strip(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_second_run_into_a_finished_runs_directory_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--out", str(run), *_sets()]) == 0
    before = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "checkpoint.pt")}
    capsys.readouterr()
    assert cli.main(["train", "--out", str(run), *_sets(["epochs=2"])]) == 2
    err = capsys.readouterr().err
    assert "holds a run" in err and "--resume" in err and "--overwrite" in err
    assert {name: (run / name).read_bytes() for name in before} == before


def test_overwrite_replaces_the_run(tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", "--out", str(run), *_sets()]) == 0
    assert cli.main(["train", "--out", str(run), "--overwrite", *_sets(["epochs=2"])]) == 0
    fresh = tmp_path / "fresh"
    assert cli.main(["train", "--out", str(fresh), *_sets(["epochs=2"])]) == 0
    assert _records(run) == _records(fresh)


def test_resume_auto_starts_afresh_then_continues_a_killed_run(tmp_path):
    full = tmp_path / "full"
    assert cli.main(["train", "--out", str(full), *_sets(["checkpoint_every=3"])]) == 0
    cut = tmp_path / "cut"
    assert not continues(cut, "auto")  # nothing there: a fresh start
    CoupledTrainer(load_config(None, [*TINY, "checkpoint_every=3"]), cut, log=lambda *_: None).run(stop_after=5)
    assert continues(cut, "auto")
    assert cli.main(["train", "--out", str(cut), "--resume", "auto", *_sets(["checkpoint_every=3"])]) == 0
    assert _records(cut) == _records(full)
    # once finished, --resume auto again changes nothing
    assert cli.main(["train", "--out", str(cut), "--resume", "auto", *_sets(["checkpoint_every=3"])]) == 0
    assert _records(cut) == _records(full)


@pytest.mark.parametrize("kwargs,match", [
    (dict(resume=True, overwrite=True), "exclude"),
    (dict(resume="yes"), "resume"),
])
def test_contradictory_or_unknown_flags_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        continues(tmp_path, **kwargs)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "none"), "--resume", *_sets()]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_sweep_refuses_then_resumes_its_runs(tmp_path, capsys):
    args = ["sweep", "--factor", "temperature", "--values", "0.5,1", "--out", str(tmp_path), *_sets(["epochs=1"])]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(args) == 2
    assert "holds a run" in capsys.readouterr().err
    assert cli.main([*args, "--resume", "auto"]) == 0
