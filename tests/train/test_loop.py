"""The coupled trainer end to end on a tiny run: records, shared randomness, determinism, CLI errors."""
import json

import pytest
import torch

from clnscl import cli
from clnscl.train.config import load_config
from clnscl.train.loop import CoupledTrainer
from clnscl.train.records import without_timings
from tests.support.imagetree import image_tree

TINY = ["epochs=2", "batch_size=64", "eval_every=4", "warmup_epochs=1", "num_classes=5", "reference_size=60"]


def _run(tmp_path, name, extra=()):
    settings = [a for kv in [*TINY, *extra] for a in ("--set", kv)]
    assert cli.main(["train", "--out", str(tmp_path / name), *settings]) == 0
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


def test_records_every_metric_and_is_deterministic(tmp_path):
    first = _run(tmp_path, "a")
    second = _run(tmp_path, "b")
    steps = [r["step"] for r in first]
    assert len(steps) >= 2 and steps == sorted(set(steps))
    for m in ("nscl", "supcon", "ce"):
        for key in ("cka_cosine", "cka_linear", "rsa_pearson", "gap_relative", "h/cka_cosine", "weight_div"):
            assert f"{key}/{m}" in first[-1], key
    for m in ("cl", "nscl", "supcon", "ce"):
        assert {f"loss/{m}", f"nccc/{m}", f"knn/{m}"} <= set(first[-1])
    assert first[-1]["loss_gap"] <= first[-1]["loss_gap_bound"]
    strip = [without_timings(r) for r in first]
    assert strip == [without_timings(r) for r in second]  # same seed, same metrics
    assert (tmp_path / "a" / "metrics.csv").exists() and (tmp_path / "a" / "config.yaml").exists()
    assert json.loads((tmp_path / "a" / "classes.json").read_text()) == sorted(json.loads(
        (tmp_path / "b" / "classes.json").read_text()))


def test_models_start_identical_and_diverge(tmp_path):
    cfg = load_config(None, TINY)
    trainer = CoupledTrainer(cfg, tmp_path / "run", log=lambda *_: None)
    states = [m.state_dict() for m in trainer.models]
    assert all(torch.equal(states[0][k], s[k]) for s in states[1:] for k in states[0])
    trainer.train_step()
    after = [m.state_dict() for m in trainer.models]
    key = "projector.0.weight"
    assert not torch.equal(after[0][key], after[1][key])  # different objectives, different updates


def test_a_different_seed_changes_the_run(tmp_path):
    assert _run(tmp_path, "a")[-1]["loss/cl"] != _run(tmp_path, "c", ["seed=1"])[-1]["loss/cl"]


def test_bad_key_and_value_exit_with_a_message(tmp_path, capsys):
    assert cli.main(["train", "--set", "temprature=0.1", "--out", str(tmp_path)]) == 2
    assert "temprature" in capsys.readouterr().err
    assert cli.main(["train", "--set", "optimizer=rmsprop", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "optimizer" in err and "sgd" in err


def test_help_documents_every_key(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for key in ("temperature", "objectives", "batch_size", "augment.rotation", "sampler", "eval_every"):
        assert key in out


def test_resume_after_a_kill_gives_the_same_metrics(tmp_path):
    overrides = [*TINY, "checkpoint_every=3"]
    full = CoupledTrainer(load_config(None, overrides), tmp_path / "full", log=lambda *_: None).run()
    killed = CoupledTrainer(load_config(None, overrides), tmp_path / "cut", log=lambda *_: None)
    killed.run(stop_after=7)  # mid-epoch; the last checkpoint is at step 6
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text()
    (tmp_path / "cut" / "metrics.jsonl").write_text(lines + '{"step": 99, "trunc')  # a line cut by the kill
    resumed = CoupledTrainer(load_config(None, overrides), tmp_path / "cut", log=lambda *_: None).run(resume=True)
    strip = lambda recs: [without_timings(r) for r in recs]  # noqa: E731
    assert strip(resumed) == strip(full)
    on_disk = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert strip(on_disk) == strip(full)


def test_corrupt_or_mismatched_checkpoint_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--out", str(run), *[a for kv in TINY for a in ("--set", kv)]]) == 0
    args = ["train", "--resume", "--out", str(run), *[a for kv in TINY for a in ("--set", kv)]]
    assert cli.main([*args, "--set", "temperature=0.3"]) == 2
    assert "temperature" in capsys.readouterr().err
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert cli.main(args) == 2
    assert "corrupt" in capsys.readouterr().err


def test_two_processes_with_the_same_seed_give_identical_metrics(tmp_path):
    """Across processes too (thread scheduling differs): no non-deterministic kernel on the CPU path."""
    import subprocess
    import sys

    for name in ("p1", "p2"):
        # batches of 256 samples (512 rows × 64): large enough for PyTorch to parallelise its CPU kernels
        sets = [a for kv in [*TINY, "objectives=[cl,supcon]", "batch_size=256", "num_classes=null", "epochs=1"]
                for a in ("--set", kv)]
        subprocess.run([sys.executable, "-m", "clnscl.cli", "train", "--out", str(tmp_path / name), *sets],
                       check=True, capture_output=True, timeout=300)
    read = lambda n: [without_timings(json.loads(line))  # noqa: E731
                      for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
    assert read("p1") == read("p2")


def test_streaming_from_disk_gives_the_same_run_as_in_memory(tmp_path, monkeypatch):
    """stream=true decodes the training batches in 2 DataLoader worker processes, ahead of the steps; the
    decoding is the one load_imagefolder uses, so training and evaluation see bit-identical images and every
    metric is identical."""
    import os

    from clnscl.train.config import Config
    from clnscl.train.datasets import ImageFiles, TensorImages

    tree = image_tree(tmp_path / "tree")
    base = dict(dataset="imagefolder", data_root=str(tree), image_size=16, model="small_cnn", batch_size=12,
                epochs=1, warmup_epochs=0, eval_every=2, knn_k=3, hidden_dim=32, projector_dim=16,
                loader_workers=2, device="cpu")
    decoders = tmp_path / "decoders.txt"  # the pid of every training image's decoding

    def decode(self, i, decode=ImageFiles.train_image):
        with decoders.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return decode(self, i)

    monkeypatch.setattr(ImageFiles, "train_image", decode)  # the forked workers inherit it
    runs = {}
    for stream in (False, True):
        trainer = CoupledTrainer(Config(**base, stream=stream), tmp_path / f"stream{stream}", log=lambda *_: None)
        assert isinstance(trainer.data.train, ImageFiles if stream else TensorImages)
        assert trainer.total_steps == 3
        runs[stream] = trainer.run(stop_after=3)
        for source in (trainer.data.train, trainer.data.reference, trainer.data.probe):
            getattr(source, "close", lambda: None)()  # the decoding threads of the streamed sources
    pids = decoders.read_text().split()
    assert len(pids) >= 3 * 12 and os.getpid() not in map(int, pids) and len(set(pids)) == 2
    assert [r["step"] for r in runs[False]] == [1, 2, 3]  # steps 1 and 2 (eval_every), 3 (the last)
    # exact equality of every value but the time; JSON text, whose floats are exact reprs, so a NaN of a
    # degenerate statistic would compare equal to itself too
    strip = lambda recs: json.dumps([without_timings(r) for r in recs])  # noqa: E731
    assert strip(runs[True]) == strip(runs[False])
    last = runs[True][-1]
    for key in ("cka_cosine/nscl", "h/cka_linear/ce", "loss_gap", "loss/supcon", "knn/cl"):
        assert last[key] == last[key], key  # not NaN


def test_a_streamed_run_resumed_mid_epoch_equals_the_uninterrupted_one(tmp_path):
    """The DataLoader runs ahead of the steps, across epoch boundaries; a resumed run builds it from the
    restored sampler, so the batches (and records) after the resume are the uninterrupted run's."""
    tree = image_tree(tmp_path / "tree", per_class=8)
    over = [f"data_root={tree}", "dataset=imagefolder", "stream=true", "loader_workers=2", "image_size=12",
            "batch_size=6", "epochs=3", "warmup_epochs=0", "eval_every=2", "knn_k=3", "hidden_dim=16",
            "projector_dim=8", "checkpoint_every=4", "objectives=[cl,nscl]", "device=cpu"]
    full = CoupledTrainer(load_config(None, over), tmp_path / "full", log=lambda *_: None).run()
    assert full[-1]["step"] == 9  # 3 epochs of 3 steps: the loader crossed two epoch boundaries
    CoupledTrainer(load_config(None, over), tmp_path / "cut", log=lambda *_: None).run(stop_after=5)
    resumed = CoupledTrainer(load_config(None, over), tmp_path / "cut", log=lambda *_: None).run(resume=True)
    strip = lambda recs: [without_timings(r) for r in recs]  # noqa: E731
    assert strip(resumed) == strip(full)


def test_the_linear_probe_is_recorded_when_asked_for(tmp_path):
    """linear_probe=true adds linear/<model>: metrics.linear_probe_accuracy of the probe set's encoder features
    against the reference set's, for every model; off by default."""
    from clnscl.metrics import linear_probe_accuracy
    from tests.support.features import features as _features

    trainer = CoupledTrainer(load_config(None, [*TINY, "linear_probe=true"]), tmp_path / "lp", log=lambda *_: None)
    rec = trainer.run(stop_after=1)[-1]
    data = trainer.data
    ref = _features(trainer.models, data.reference, torch.arange(len(data.reference)), trainer.device)
    probe = _features(trainer.models, data.probe, torch.arange(len(data.probe)), trainer.device)
    for name, (h, _), (ph, _) in zip(trainer.names, ref, probe):
        want = linear_probe_accuracy(ph, data.probe.labels, h, data.reference.labels)
        assert rec[f"linear/{name}"] == want and 0.0 <= want <= 1.0
    plain = CoupledTrainer(load_config(None, TINY), tmp_path / "plain", log=lambda *_: None).run(stop_after=1)[-1]
    assert not any(k.startswith("linear/") for k in plain)
