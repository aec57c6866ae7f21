"""What a run records beyond its metrics: the learning rate, images/s and data-wait time of every record
(timings apart from what a rerun reproduces), metrics.csv current after every record, TensorBoard event files
with every recorded number (none, and no error, without the tensorboard package unless required; a resumed run's
events once per step), checkpoint snapshots at the configured epochs."""
import builtins
import csv
import json

import pytest

from clnscl import cli
from clnscl.train.checkpoint import load_checkpoint
from clnscl.train.config import ConfigError, load_config
from clnscl.train.loop import CoupledTrainer
from clnscl.train.records import TIMINGS, without_timings

TINY = ["epochs=2", "batch_size=64", "eval_every=4", "warmup_epochs=1", "num_classes=5", "reference_size=60",
        "objectives=[cl,nscl]", "checkpoint_every=4"]


def _trainer(out, extra=()):
    return CoupledTrainer(load_config(None, [*TINY, *extra]), out, log=lambda *_: None)


def _scalars(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_records_hold_the_learning_rate_throughput_and_data_wait(tmp_path):
    trainer = _trainer(tmp_path / "r")
    records = trainer.run(stop_after=9)
    for rec in records:
        assert rec["samples_per_s"] > 0 and rec["data_wait_s"] >= 0 and rec["lr"] > 0
    lrs = [r["lr"] for r in records]
    assert lrs[0] < lrs[-1] <= trainer.cfg.scaled_lr()  # warming up over the first epoch
    assert set(TIMINGS) <= set(records[0]) and "lr" in without_timings(records[0])


def test_the_csv_is_current_after_every_record(tmp_path):
    out = tmp_path / "c"
    _trainer(out).run(stop_after=9)  # a run cut short, as a kill would leave it
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    on_disk = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [int(r["step"]) for r in rows] == [r["step"] for r in on_disk] == [1, 4, 8]
    assert not list(out.glob("*.tmp"))


def test_tensorboard_holds_every_recorded_number_once_per_step_across_a_resume(tmp_path):
    out = tmp_path / "tb"
    extra = ["tensorboard=true", "checkpoint_every=6"]
    _trainer(out, extra).run(stop_after=10)  # records at 1, 4, 8, the last checkpoint at 6: 8 is recorded again
    records = _trainer(out, extra).run(resume=True)
    scalars = _scalars(out / "tensorboard")
    numbers = {k for r in records for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
    assert numbers <= set(scalars) and {"lr", "samples_per_s", "data_wait_s", "loss/cl"} <= set(scalars)
    steps = [r["step"] for r in records]
    assert [s for s, _ in scalars["loss/cl"]] == steps  # each once, the resumed run's included
    assert [v for _, v in scalars["cka_cosine/nscl"]] == pytest.approx([r["cka_cosine/nscl"] for r in records])


def test_without_the_tensorboard_package_it_is_off_unless_required(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith(("tensorboard", "torch.utils.tensorboard")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    _trainer(tmp_path / "auto").run(stop_after=2)
    assert not (tmp_path / "auto" / "tensorboard").exists()
    sets = [a for kv in [*TINY, "tensorboard=true"] for a in ("--set", kv)]
    assert cli.main(["train", "--out", str(tmp_path / "required"), *sets]) == 2
    assert "tensorboard" in capsys.readouterr().err


def test_snapshots_keep_the_checkpoint_of_the_configured_epochs(tmp_path):
    out = tmp_path / "s"
    trainer = _trainer(out, ["snapshot_epochs=[1]"])
    trainer.run()
    path, state = load_checkpoint(out / "snapshots" / "epoch_1.pt")
    assert state["step"] == trainer.sampler.epoch_length
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["epoch_1.pt"]
    assert ("cuda" in state["coupled"]["rng"]) == (trainer.device.type == "cuda")  # the random states too
    with pytest.raises(ConfigError, match="snapshot_epochs"):
        load_config(None, [*TINY, "snapshot_epochs=[3]"])  # past the last epoch
