"""`fit` on a user's model (an MLP with dropout on random vectors, not one of the package's): a real SIGTERM /
SIGUSR1 mid-run leaves a checkpoint from which a resumed run ends with the uninterrupted run's records (one
process, and two gloo processes), non-finite losses stop (or are skipped) as documented, loggers receive every
record and are closed, W&B resumes its run, and a run directory is never written over by accident.

The subprocess runs are tests/support/fit_worker.py; the in-process runs build the same model and data."""
from __future__ import annotations

import copy
import math
import os
import re
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import pytest
import torch

from clnscl.train.checkpoint import CHECKPOINT_FILE, load_checkpoint
from clnscl.train.coupled import NonFiniteError
from clnscl.train.fit import PREEMPTED_EXIT_CODE, STOP_SIGNALS, Preempted, fit
from clnscl.train.records import METRICS_FILE, read_records, without_timings
from tests.support import fit_worker as fw
from tests.support.processes import REPO, SUPPORT, gloo_env

WORKER = SUPPORT / "fit_worker.py"
STEPS = 30  # the subprocess runs: evaluations every 5 steps, checkpoints every 10, 6 batches an epoch


@pytest.fixture(autouse=True)
def _one_thread_own_rng():
    """In-process fits: one thread, and the test session's random stream as it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------- helpers
class Workers:
    """fit_worker.py processes of one run (one, or one per rank of a gloo group), logs in files."""

    def __init__(self, out: Path, mode: str, world: int = 0, steps: int = STEPS):
        self.out, self.procs, self.logs = out, [], []
        out.parent.mkdir(parents=True, exist_ok=True)
        store = out.parent / f"{out.name}.{mode}.store"
        store.unlink(missing_ok=True)
        for rank in range(max(world, 1)):
            log = out.parent / f"{out.name}.{mode}.rank{rank}.log"
            self.logs.append(log)
            args = [str(rank), str(world), str(store)] if world else []
            with open(log, "wb") as fh:
                self.procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), str(steps), mode, *args],
                                                   stdout=fh, stderr=subprocess.STDOUT, env=gloo_env(),
                                                   cwd=str(REPO)))

    def text(self) -> str:
        return "\n".join(f"--- rank {r} (exit {p.returncode}):\n{log.read_text(errors='replace')[-4000:]}"
                         for r, (p, log) in enumerate(zip(self.procs, self.logs)))

    def wait_for_markers(self, timeout: float = 90.0) -> None:
        """Until every rank has written out/passed.rank{R} (it is past step fw.MARK_AFTER, and slowed down)."""
        markers = [self.out / f"passed.rank{r}" for r in range(len(self.procs))]
        deadline = time.monotonic() + timeout
        while not all(m.exists() for m in markers):
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                self.kill()
                pytest.fail("a worker ended (or hung) before it reached the step to be signalled at\n" + self.text())
            time.sleep(0.01)

    def wait(self, timeout: float = 120.0) -> list[int]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"fit_worker hung (killed after {timeout:.0f} s)\n" + self.text())
        return [p.returncode for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)

    def signal(self, sig: signal.Signals) -> None:
        for p in self.procs:
            p.send_signal(sig)

    def records(self) -> list[dict]:
        codes = self.wait()
        assert codes == [0] * len(codes), self.text()
        return records_of(self.out)


def records_of(out: Path) -> list[dict]:
    return [without_timings(r) for r in read_records(out / METRICS_FILE)[0]]


def differences(a: list[dict], b: list[dict]) -> list:
    """The first few keys in which two lists of records differ (for the failure messages)."""
    if [r["step"] for r in a] != [r["step"] for r in b]:
        return [("steps", [r["step"] for r in a], [r["step"] for r in b])]
    return [(x["step"], k, x.get(k), y.get(k)) for x, y in zip(a, b) for k in sorted(set(x) | set(y))
            if not (x.get(k) == y.get(k) or (x.get(k) != x.get(k) and y.get(k) != y.get(k)))][:8]


def interrupt_and_resume(out: Path, sig: signal.Signals, world: int = 0) -> dict:
    """A slowed-down run of fit_worker signalled once past step fw.MARK_AFTER; checks the stop; resumes it to
    the end. The checkpoint state the signal left."""
    run = Workers(out, "slow", world)
    run.wait_for_markers()
    run.signal(sig)
    codes = run.wait()
    assert codes == [PREEMPTED_EXIT_CODE] * len(codes), f"{sig.name}: expected exit code 75 everywhere\n" + run.text()
    assert f"{sig.name}: stopped after step" in run.logs[0].read_text(), run.text()
    _, state = load_checkpoint(out)
    assert fw.MARK_AFTER <= state["step"] < STEPS, f"the checkpoint is at step {state['step']}"
    assert state["coupled"]["steps"] == state["step"]
    kept = records_of(out)
    assert kept and all(r["step"] <= state["step"] for r in kept), [r["step"] for r in kept]
    resumed = Workers(out, "resume", world)
    assert resumed.wait() == [0] * max(world, 1), resumed.text()
    assert load_checkpoint(out)[1]["step"] == STEPS
    return state


def batches(n: int, steps: int = 6):
    """The first n training batches of fit_worker's DataLoader (drawn under fw.build's seed), as a list."""
    _, train, *_ = fw.build(steps)
    return [(v.clone(), y.clone()) for v, y in islice(_epochs(train), n)]


def _epochs(train):
    while True:
        yield from train


class Recorder:
    """A logger: every record it receives, and how often it was closed; raises at step `fail_at`, sends
    itself `sig` at step `signal_at` (as a cluster's preemption would)."""

    def __init__(self, fail_at: int | None = None, signal_at: int | None = None, sig=signal.SIGTERM):
        self.records, self.closed = [], 0
        self.fail_at, self.signal_at, self.sig = fail_at, signal_at, sig

    def log(self, record: dict) -> None:
        assert self.closed == 0, "log after close"
        self.records.append(dict(record))
        if record["step"] == self.fail_at:
            raise RuntimeError(f"logger failed at step {record['step']}")
        if record["step"] == self.signal_at:
            os.kill(os.getpid(), self.sig)

    def close(self) -> None:
        self.closed += 1


def fit_here(out: Path, steps: int, train=None, *, loggers=(), **kw) -> list[dict]:
    """fit of fit_worker's model and data in this process (eval_every 2, no checkpoint_every unless given)."""
    coupled, loader, reference, probe, gap = fw.build(steps)
    kw = {"eval_every": 2, "progress": False, "log": lambda msg: None, **kw}
    return fit(coupled, loader if train is None else train, reference, out=out, steps=steps, loggers=loggers,
               probe=probe, gap=gap, **kw)


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if torch.is_tensor(t) and t.is_floating_point())


# ---------------------------------------------------------------------------------------- preemption
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """fit_worker's run without interruption, started at once (it runs beside the interrupted ones)."""
    workers = Workers(tmp_path_factory.mktemp("uninterrupted") / "run", "run")
    yield workers
    workers.kill()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_mid_run_leaves_a_checkpoint_and_the_resumed_run_ends_with_the_uninterrupted_records(
        signame, uninterrupted, tmp_path):
    sig = getattr(signal, signame)
    assert sig in STOP_SIGNALS
    interrupt_and_resume(tmp_path / "run", sig)
    got, want = records_of(tmp_path / "run"), uninterrupted.records()
    assert [r["step"] for r in want] == [1, 5, 10, 15, 20, 25, 30]
    # one process, one thread, the same code path: bit for bit
    assert got == want, differences(got, want)


@pytest.mark.distributed
def test_sigterm_to_two_gloo_processes_and_their_resumed_run_end_with_the_uninterrupted_records(tmp_path):
    base = Workers(tmp_path / "base" / "run", "run", world=2)  # beside the interrupted run
    try:
        state = interrupt_and_resume(tmp_path / "cut" / "run", signal.SIGTERM, world=2)
        got, want = records_of(tmp_path / "cut" / "run"), base.records()
    finally:
        base.kill()
    assert [r["step"] for r in want] == [1, 5, 10, 15, 20, 25, 30]
    assert 0 < state["position"]["batch"] <= fw.N_TRAIN // fw.BATCH
    # observed bit-for-bit equal (gloo's sums of two float32 values in a fixed order), asserted so
    assert got == want, differences(got, want)


def test_a_stop_signal_received_in_process_raises_preempted_after_writing_the_checkpoint(tmp_path):
    logger = Recorder(signal_at=2, sig=signal.SIGUSR1)
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Preempted) as info:
        fit_here(tmp_path, 6, loggers=[logger], eval_every=1, checkpoint_every=5)
    assert info.value.code == PREEMPTED_EXIT_CODE and isinstance(info.value, SystemExit)
    assert (info.value.step, info.value.signame) == (2, "SIGUSR1")
    assert load_checkpoint(tmp_path)[1]["step"] == 2  # written at the stop, not only every checkpoint_every
    assert logger.closed == 1
    assert signal.getsignal(signal.SIGUSR1) is before  # the handler put back


# ---------------------------------------------------------------------------------------- non-finite
def test_a_nan_loss_stops_fit_naming_the_step_the_objective_and_the_last_finite_loss(tmp_path):
    train = batches(6)
    train[3] = (torch.full_like(train[3][0], math.nan), train[3][1])
    logger = Recorder()
    with pytest.raises(NonFiniteError) as info:
        fit_here(tmp_path, 6, train, loggers=[logger], eval_every=1, checkpoint_every=1)
    recs = read_records(tmp_path / METRICS_FILE)[0]
    assert [r["step"] for r in recs] == [1, 2, 3]
    last = recs[-1]["loss/cl"]
    msg = str(info.value)
    assert "step 4" in msg and "the cl model's loss" in msg and f"{last:.6g}" in msg, msg
    assert (info.value.step, info.value.objective, info.value.last_finite) == (4, "cl", last)
    _, state = load_checkpoint(tmp_path)
    assert state["step"] == 3 and state["coupled"]["steps"] == 3
    for name, weights in state["coupled"]["models"].items():
        assert all_finite(weights), name
    assert all(all_finite(w) for w in state["models"])
    assert logger.closed == 1 and [r["step"] for r in logger.records] == [1, 2, 3]


def test_on_nonfinite_skip_runs_to_the_end_counting_the_skipped_step(tmp_path):
    train = batches(6)
    train[3] = (torch.full_like(train[3][0], math.nan), train[3][1])
    recs = fit_here(tmp_path, 6, train, eval_every=1, on_nonfinite="skip")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert [r["skipped_steps"] for r in recs] == [0, 0, 0, 1, 1, 1]
    assert math.isnan(recs[3]["loss/cl"]) and all(math.isfinite(r["loss/cl"]) for r in recs if r["step"] != 4)
    _, state = load_checkpoint(tmp_path)
    assert state["step"] == 6 and state["coupled"]["skipped"] == 1
    assert all(all_finite(w) for w in state["coupled"]["models"].values())


def test_a_skipped_step_leaves_every_model_and_optimiser_as_it_was():
    train = batches(4)
    nan = (torch.full_like(train[3][0], math.nan), train[3][1])
    coupled, *_ = fw.build(6)
    for views, labels in train[:3]:
        coupled.step(views, labels)
    before = copy.deepcopy(coupled.state_dict())
    lrs = {n: [g["lr"] for g in o.param_groups] for n, o in coupled.optimizers.items()}
    losses = coupled.step(*nan, on_nonfinite="skip")
    assert all(math.isnan(v) for v in losses.values()), losses
    assert (coupled.steps, coupled.skipped) == (4, 1)
    after = coupled.state_dict()
    for name in coupled.names:
        for key, w in before["models"][name].items():
            assert torch.equal(w, after["models"][name][key]), (name, key)
        moments = [s["momentum_buffer"] for s in before["optimizers"][name]["state"].values()]
        assert moments and all(torch.equal(m, s["momentum_buffer"]) for m, s in
                               zip(moments, after["optimizers"][name]["state"].values())), name
    for key, w in before["heads"]["ce"].items():
        assert torch.equal(w, after["heads"]["ce"][key]), key
    assert {n: [g["lr"] for g in o.param_groups] for n, o in coupled.optimizers.items()} == lrs  # schedules
    assert [s["last_epoch"] for s in after["schedulers"].values()] == [3] * len(coupled.names)
    assert all(p.grad is None for m in coupled.models.values() for p in m.parameters())
    # "stop" leaves them untouched as well
    with pytest.raises(NonFiniteError, match="step 5"):
        coupled.step(*nan)
    for name in coupled.names:
        for key, w in before["models"][name].items():
            assert torch.equal(w, coupled.models[name].state_dict()[key]), (name, key)


# ------------------------------------------------------------------------------------------- loggers
def test_a_custom_logger_receives_every_record_and_is_closed_also_the_ones_after_the_checkpoint_on_resume(
        tmp_path):
    whole = Recorder()
    recs = fit_here(tmp_path / "whole", 6, loggers=[whole])
    assert [r["step"] for r in recs] == [1, 2, 4, 6]
    assert whole.records == recs and whole.closed == 1

    # a crash after step 4's record was appended, before a checkpoint (every 3 steps) held step 4
    failing = Recorder(fail_at=4)
    with pytest.raises(RuntimeError, match="logger failed at step 4"):
        fit_here(tmp_path / "cut", 6, loggers=[failing], checkpoint_every=3)
    assert failing.closed == 1
    assert load_checkpoint(tmp_path / "cut")[1]["step"] == 3
    assert [r["step"] for r in read_records(tmp_path / "cut" / METRICS_FILE)[0]] == [1, 2, 4]
    again = Recorder()
    fit_here(tmp_path / "cut", 6, loggers=[again], checkpoint_every=3, resume=True)
    assert [r["step"] for r in again.records] == [4, 6], "the records after the checkpoint are logged again"
    assert again.closed == 1
    got, want = records_of(tmp_path / "cut"), [without_timings(r) for r in recs]
    assert got == want, differences(got, want)


def test_wandb_offline_writes_its_run_under_the_run_directory_and_a_resumed_fit_continues_that_run(
        tmp_path, monkeypatch):
    try:
        import wandb
    except ImportError:
        pytest.fail("the wandb package is missing: install the test extras (pip install -e '.[test]'), which "
                    "the wandb logger's test needs")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    out = tmp_path / "run"
    with pytest.raises(Preempted):
        try:
            fit_here(out, 4, loggers=("wandb", Recorder(signal_at=2)), checkpoint_every=4)
        except AttributeError as exc:  # an API of wandb that this version lacks
            pytest.fail(f"the wandb logger does not start with wandb {wandb.__version__}: {exc!r}")
    run_id = (out / "wandb_id").read_text().strip()
    assert run_id
    runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].endswith(run_id), runs
    fit_here(out, 4, loggers=("wandb",), checkpoint_every=4, resume=True)
    assert (out / "wandb_id").read_text().strip() == run_id
    runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    # wandb names a run's folder offline-run-<start second>-<id>, with -1, -2, ... when a folder of that name
    # exists: a resumed run that starts within the same second gets the suffix
    named = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run_id)}(-\d+)?")
    assert len(runs) == 2 and all(named.fullmatch(r) for r in runs), runs


def test_tensorboard_holds_every_record_once_across_a_preemption_at_an_evaluation_step(tmp_path):
    pytest.importorskip("tensorboard")  # in the test extras; without it the default logger is none
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # stopped right after step 2's record: the checkpoint is step 2's, and so is the resumed run's purge step
    with pytest.raises(Preempted):
        fit_here(tmp_path, 6, loggers=("tensorboard", Recorder(signal_at=2)))
    recs = fit_here(tmp_path, 6, loggers=("tensorboard",), resume=True)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("loss/cl")]
    assert steps == [r["step"] for r in recs] == [1, 2, 4, 6], (
        f"TensorBoard holds loss/cl at steps {steps}: the resumed run purged the events from the checkpoint's "
        "step on (purge_step = that step) but logged again only the records after it (step > checkpoint)")


# ------------------------------------------------------------------------------------- run directory
def test_a_directory_holding_a_run_is_not_written_over_nor_resumed_by_another_run(tmp_path):
    with pytest.raises(Preempted):
        fit_here(tmp_path, 6, loggers=[Recorder(signal_at=2)])
    held = {name: (tmp_path / name).read_bytes() for name in (CHECKPOINT_FILE, METRICS_FILE)}
    with pytest.raises(ValueError, match="holds a run") as info:
        fit_here(tmp_path, 6)
    assert "--resume" in str(info.value) and "--overwrite" in str(info.value)
    with pytest.raises(ValueError, match="belongs to another run") as info:
        fit_here(tmp_path, 8, resume=True)
    assert "total_steps" in str(info.value)
    with pytest.raises(ValueError, match="exclude each other"):
        fit_here(tmp_path, 6, resume=True, overwrite=True)
    assert {name: (tmp_path / name).read_bytes() for name in held} == held, "a refused fit changed the run"


def test_overwrite_replaces_the_run_so_that_resume_auto_never_continues_the_replaced_one(tmp_path):
    with pytest.raises(Preempted):
        fit_here(tmp_path, 6, loggers=[Recorder(signal_at=4)], eval_every=1)
    # the replacing run fails before its first checkpoint (every 5 steps); a requeued job resumes "auto"
    with pytest.raises(RuntimeError, match="logger failed"):
        fit_here(tmp_path, 6, loggers=[Recorder(fail_at=1)], eval_every=1, checkpoint_every=5, overwrite=True)
    assert [r["step"] for r in read_records(tmp_path / METRICS_FILE)[0]] == [1]
    left = load_checkpoint(tmp_path)[1]["step"] if (tmp_path / CHECKPOINT_FILE).exists() else None
    recs = fit_here(tmp_path, 6, eval_every=1, checkpoint_every=5, resume="auto")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6], (
        f"fit(overwrite=True) kept the replaced run's checkpoint (step {left}) beside the new run's "
        "metrics.jsonl, and resume='auto' continued the replaced run under the new run's records")


def test_the_command_line_stops_a_diverging_run_naming_the_step_and_the_model(tmp_path, capsys):
    """`clnscl train --set lr=1e8` (tried on issue 20: it trained on to an evaluation that then failed on NaN
    features) stops at the first non-finite step with exit code 3, naming the step, the model and its last
    finite loss; its checkpoint, if any, holds finite weights only."""
    from clnscl import cli
    from clnscl.train.checkpoint import load_checkpoint

    sets = ["epochs=2", "batch_size=64", "num_classes=4", "reference_size=40", "eval_every=1000", "lr=1e8",
            "checkpoint_every=1"]
    code = cli.main(["train", "--out", str(tmp_path / "run"), *[a for kv in sets for a in ("--set", kv)]])
    err = capsys.readouterr().err
    assert code == 3, err
    assert re.search(r"clnscl train: step \d+: the \w+ model's (loss|gradient norm|weights) (is|are) not finite "
                     r"\(its last finite loss: [-+.\de]+\)", err), err
    _, state = load_checkpoint(tmp_path / "run")
    assert all(torch.isfinite(v).all() for sd in state["models"] for v in sd.values() if v.is_floating_point())


def test_clnscl_train_stopped_by_sigterm_resumes_to_the_uninterrupted_records(tmp_path):
    """`clnscl train` in a child process gets a real SIGTERM after its third record: it exits with code 75 and
    a checkpoint; the same command with --resume ends with the records of a run never stopped."""
    sets = ["epochs=3", "batch_size=64", "num_classes=4", "reference_size=40", "eval_every=2", "checkpoint_every=50",
            "warmup_epochs=1", "tensorboard=false"]
    args = [a for kv in sets for a in ("--set", kv)]
    env = gloo_env()

    def train(out, *extra):
        return subprocess.Popen([sys.executable, "-m", "clnscl", "train", "--out", str(out), *args, *extra],
                                env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    cut = tmp_path / "cut"
    proc = train(cut)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        path = cut / METRICS_FILE
        if path.exists() and len(path.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == PREEMPTED_EXIT_CODE, out[-3000:]
    assert "SIGTERM: stopped after step" in out
    _, state = load_checkpoint(cut)
    whole = tmp_path / "whole"
    for p, what in ((train(cut, "--resume"), "resumed"), (train(whole), "uninterrupted")):
        text = p.communicate(timeout=300)[0]
        assert p.returncode == 0, f"{what}: {text[-3000:]}"
    steps_total = read_records(whole / METRICS_FILE)[0][-1]["step"]
    assert 0 < state["step"] < steps_total
    assert ([without_timings(r) for r in read_records(cut / METRICS_FILE)[0]]
            == [without_timings(r) for r in read_records(whole / METRICS_FILE)[0]])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"knn_k": 0}, ValueError, "knn_k"),
    ({"knn_k": 2.5}, TypeError, "knn_k"),
    ({"theory_delta": 1.0}, ValueError, "theory_delta"),
    ({"loggers": "tensorboard"}, ValueError, r"loggers must be a sequence, e.g. \['tensorboard'\]"),
])
def test_bad_evaluation_options_and_loggers_are_refused_before_the_first_step(tmp_path, kwargs, error, match):
    coupled, train, reference, probe, gap = fw.build(4)
    with pytest.raises(error, match=match):
        fit(coupled, train, reference, out=tmp_path / "run", eval_every=2, steps=4, progress=False, **kwargs)
    assert coupled.steps == 0 and not (tmp_path / "run").exists()
