"""`torchrun -m clnscl train` with 2 CPU processes on gloo: DDP models, global negatives, rank 0 writes."""
import json
import os
import subprocess

import pytest

from clnscl.train.records import TIMINGS
from tests.support.processes import REPO, SUPPORT, repo_env, torchrun

pytestmark = pytest.mark.distributed


def test_two_process_training_writes_one_run(tmp_path):
    sets = ["epochs=2", "batch_size=64", "eval_every=4", "warmup_epochs=1", "num_classes=5", "reference_size=60"]
    cmd = [torchrun(), "--standalone", "--nproc_per_node=2", "-m", "clnscl", "train", "--out", str(tmp_path / "run"),
           *[a for kv in sets for a in ("--set", kv)]]
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))  # torchrun's log folders stay in tmp_path
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)) and len(steps) >= 2  # written once, by rank 0
    last = records[-1]
    assert all(last[f"loss/{m}"] == last[f"loss/{m}"] for m in ("cl", "nscl", "supcon", "ce"))  # not NaN
    assert last["loss_gap"] <= last["loss_gap_bound"]
    assert (tmp_path / "run" / "checkpoint.pt").exists() and (tmp_path / "run" / "alignment.png").exists()


def _run_worker(run, config: dict, *extra: str) -> None:
    """2 ranks of tests/support/train_eval_worker.py on gloo (see its docstring); fails with the ranks' errors."""
    env = repo_env(OMP_NUM_THREADS="1", TMPDIR=str(run.parent))
    cmd = [torchrun(), "--standalone", "--nproc_per_node=2", str(SUPPORT / "train_eval_worker.py"),
           str(run), json.dumps(config), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=str(REPO))
    errors = "".join(p.read_text() for p in sorted(run.glob("error_rank*.txt"))) if run.exists() else ""
    assert done.returncode == 0, errors + done.stdout[-2000:] + done.stderr[-3000:]


def test_distributed_evaluation_equals_single_process_evaluation(tmp_path):
    """2 ranks (stratified batches) train 3 steps and evaluate; one process evaluates the saved checkpoint.

    The reference set (61, odd) is split unevenly between the ranks and its loss-gap batches (3 of 21/20/20
    samples) are dealt out unevenly, so the all-reduced alignment statistics, the gathered accuracy features
    and the all-reduced loss gap are each checked against one process seeing everything; the NCC, k-NN and
    linear-probe accuracies are each rank's queries' counts summed. Features are fp32
    from differently composed batches, hence close, not equal."""
    import math

    from clnscl.train.config import Config
    from clnscl.train.loop import CoupledTrainer

    config = {"epochs": 1, "warmup_epochs": 0, "batch_size": 24, "num_classes": 4, "sampler": "stratified",
              "reference_size": 61, "probe_size": 150, "eval_every": 3, "checkpoint_every": 1000,
              "objectives": ["cl", "nscl", "supcon", "ce"], "device": "cpu", "linear_probe": True}
    run = tmp_path / "ddp"
    _run_worker(run, config)

    ranks = [json.loads((run / f"eval_rank{r}.json").read_text()) for r in (0, 1)]
    assert "linear/nscl" in ranks[0]["record"]  # the accuracies score each rank's queries, summed
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [3, 3]
    dist_rec = ranks[0]["record"]

    def numeric(rec):
        return {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def assert_close(got, want, what):
        assert set(got) == set(want), f"{what}: keys differ: {sorted(set(got) ^ set(want))}"
        for k, v in numeric(want).items():
            assert math.isfinite(v), f"{what}: {k} = {v}"
            assert math.isclose(got[k], v, rel_tol=1e-4, abs_tol=1e-6), f"{what}: {k}: {got[k]!r} != {v!r}"
        for k in set(want) - set(numeric(want)):
            assert got[k] == want[k], f"{what}: {k}: {got[k]!r} != {want[k]!r}"

    assert_close(ranks[1]["record"], dist_rec, "rank 1 vs rank 0")  # every rank returns the same record

    # the stratified 2-process run itself: rank 0 wrote the records of steps 1 and 3, once each
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 3]
    for r in records:
        assert all(math.isfinite(r[f"loss/{m}"]) for m in config["objectives"])
        assert r["loss_gap"] <= r["loss_gap_bound"]
    # evaluating again, without training in between, gives the record of step 3
    assert_close({k: records[-1][k] for k in dist_rec}, dist_rec, "run() record vs evaluate()")

    single = CoupledTrainer(Config(**config), tmp_path / "single", log=lambda *_: None)
    assert single.world == 1
    single.load_checkpoint(run / "checkpoint.pt")
    assert single.step == 3
    first, second = single.evaluate(), single.evaluate()
    assert first == second  # one process: deterministic, bit for bit
    assert_close(dist_rec, first, "2 ranks vs 1 process")
    assert set(numeric(first)) >= {"loss_gap", "loss_gap_bound", "cka_cosine/nscl", "h/rsa_pearson/ce",
                                   "weight_div/supcon", "nccc/cl", "knn/ce"}


@pytest.mark.parametrize("sampler", ["uniform", "stratified"])
def test_two_process_training_equals_one_process_training(tmp_path, sampler):
    """2 CPU ranks on gloo train the same run as one process holding the whole batch: each rank loads and
    augments its shard, the losses see global negatives, batch norm normalises over the global batch
    (GlobalBatchNorm) and DDP averages the gradients. Losses, metrics and weights after 3 steps agree up to
    float32 rounding (they would differ at the 1e-2 level with per-shard batch statistics)."""
    import torch

    from clnscl.train.config import Config
    from clnscl.train.loop import CoupledTrainer

    config = {"epochs": 1, "warmup_epochs": 0, "batch_size": 40, "num_classes": 4, "sampler": sampler,
              "reference_size": 45, "eval_every": 1, "checkpoint_every": 1000,
              "objectives": ["cl", "nscl", "supcon", "ce"], "device": "cpu"}
    run = tmp_path / "ddp"
    _run_worker(run, config)
    two = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    single = CoupledTrainer(Config(**config), tmp_path / "single", log=lambda *_: None)
    one = single.run(stop_after=3)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    state = _assert_records_agree(two, one, run, single, config)
    for name, model, sd in zip(config["objectives"], single.models, state["models"]):
        for k, v in model.state_dict().items():
            torch.testing.assert_close(sd[k], v, rtol=1e-3, atol=3e-5, msg=lambda m: f"{name}.{k}: {m}")


def _assert_records_agree(two: list, one: list, run, single, config: dict) -> dict:
    """The 2-process records `two` agree with the single process's `one` step by step: well-conditioned keys
    (losses, CKA, RSA, accuracies) to 2e-4 relative; the keys that divide a difference by a small norm (the
    similarity gaps, ρ, r and their bounds, weight divergence, the loss gap) within the move that the two runs'
    measured difference at their last step — the unit rows of the reference features, the weight matrices —
    bounds (tests/support/conditioning.py; the difference only grows with the steps, so the last step's bounds
    the earlier ones). Returns the 2-process run's checkpoint state (its last step, as `single` now is)."""
    import math

    import torch

    from clnscl.train.checkpoint import load_checkpoint
    from clnscl.train.config import Config
    from clnscl.train.loop import CoupledTrainer
    from tests.support.conditioning import abs_tolerance, row_error, weight_error
    from tests.support.features import features as _features

    _, state = load_checkpoint(run)  # weights_only: a distributed run's checkpoint holds no code
    other = CoupledTrainer(Config(**config), run.parent / "two_models", log=lambda *_: None)
    other.load_checkpoint(run / "checkpoint.pt")
    ref = single.data.reference
    idx = torch.arange(len(ref))
    ours, theirs = (_features(t.models, ref, idx, t.device) for t in (single, other))
    eps = {k: max(row_error(a[k], b[k]) for a, b in zip(ours, theirs)) for k in (0, 1)}  # h, z
    eps_w = max(weight_error(a.state_dict(), b.state_dict()) for a, b in zip(single.models, other.models))
    for a, b in zip(two, one):
        for k, v in b.items():
            if k in TIMINGS or not isinstance(v, float):
                continue
            e = eps[0] if k.startswith("h/") else eps[1] * (2 if k == "loss_gap" else 1)  # gap: other inputs
            tol = abs_tolerance(k, b, e, eps_w, len(ref), config.get("temperature", 0.5))
            ok = math.isclose(a[k], v, rel_tol=2e-4, abs_tol=2e-5) if tol is None else abs(a[k] - v) <= tol
            assert ok, f"step {b['step']}: {k}: {a[k]!r} != {v!r} (tolerance {tol}, ε {e:.2e}, ε_w {eps_w:.2e})"
    return state


def test_two_process_run_resumed_equals_one_uninterrupted_process(tmp_path):
    """2 ranks stop after 2 steps (checkpoint every step), 2 new ranks resume to step 4: the records equal
    those of one process running 4 steps uninterrupted (the sampler, augmentation and optimiser states of a
    checkpoint serve every rank)."""
    from clnscl.train.config import Config
    from clnscl.train.loop import CoupledTrainer

    config = {"epochs": 1, "warmup_epochs": 0, "batch_size": 40, "num_classes": 4, "reference_size": 45,
              "eval_every": 1, "checkpoint_every": 1, "objectives": ["cl", "nscl", "ce"], "device": "cpu"}
    run = tmp_path / "ddp"
    _run_worker(run, config, "2")
    _run_worker(run, config, "4", "resume")
    two = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    single = CoupledTrainer(Config(**config), tmp_path / "single", log=lambda *_: None)
    one = single.run(stop_after=4)
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3, 4]
    _assert_records_agree(two, one, run, single, config)
