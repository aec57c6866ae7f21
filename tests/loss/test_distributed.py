"""Multi-process tests of `contrastive_loss(..., process_group=...)` on gloo (docs/design.md §2, Distributed).

Each test starts one process group of 2 or 3 CPU subprocesses (tests/support/dist_worker.py) that runs many
configurations — objectives cl / nscl / supcon × decoupled, backends reference and cpu, V = 2 and 3, d = 13
or 7 — on different seeded rows per rank, and checks in every rank against the single-process reference on
the concatenated global batch:
  - the value is the mean of the reference's reduction='none' rows of this rank ('none' and 'sum' too);
  - z.grad is the gradient of Σ_ranks (local mean) w.r.t. this rank's rows, i.e. world_size × the gradient
    of the global mean when the local batch sizes are equal (float64, rtol 1e-9);
  - with unequal local batch sizes it works, and Σ_r B_r·V·loss_r is the global sum (checked here);
  - labels with three classes spread over all ranks, so Same(a) spans ranks, plus one singleton class;
  - a tensor temperature's gradient on each rank is that of its own loss;
  - the two-tower loss (clip_loss) with local rows against every rank's columns, likewise;
  - with equal local batch sizes (2 and 3 ranks), clip_loss's value and a / b / logit_scale gradients equal
    those of the installed open_clip's ClipLoss(local_loss=True, gather_with_grad=True), normalize on and off;
  - under DDP the averaged parameter gradients (a learnable temperature's included) equal those of one
    process on the global batch (equal sizes), and in general the gradient of (1/world_size) Σ_ranks
    (local mean); with reduction='global_mean' those of one process for any sizes.
The C++ op is built once in this process (fixture) before the workers start; the workers run on one thread.
A group that hangs is killed after a timeout and the test fails with each rank's log.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.support.processes import REPO, SUPPORT, gloo_env

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
    ),
]

WORKER = SUPPORT / "dist_worker.py"
START_TIMEOUT_S = 300.0  # until every rank has joined the group (covers a recompile of a stale C++ op cache)
JOIN_TIMEOUT_S = 120.0  # from then until all ranks exit; a hang fails the test instead of blocking CI
COLLECTIVE_TIMEOUT_S = 60.0  # gloo timeout inside the workers
GRACE_S = 10.0  # after one rank fails, how long the others may take to finish on their own


@pytest.fixture(scope="module")
def backends() -> tuple[list[str], str | None]:
    """Backends to run in the workers; the C++ op is built here once, not concurrently by every rank."""
    from clnscl.loss.backends import BACKENDS

    why = BACKENDS["cpu"].unavailable()
    return (["reference"], why) if why else (["reference", "cpu"], None)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as exc:
        return f"<no log: {exc}>"


class Group:
    """The outcome of one process group: each rank's record, exit code and log, and any group-level problem."""

    def __init__(self, sizes, records, codes, logs, problem):
        self.sizes, self.records, self.codes, self.logs, self.problem = sizes, records, codes, logs, problem

    def results(self, kind: str) -> list[list[dict]]:
        return [[r for r in rec["results"] if r.get("kind") == kind] for rec in self.records]

    def check(self, kind: str, expected_per_rank: int) -> None:
        """Fail the test with every rank's messages unless all its `kind` checks ran and passed."""
        report = []
        for rank, (rec, code, log) in enumerate(zip(self.records, self.codes, self.logs)):
            mine = [r for r in rec["results"] if r.get("kind") == kind]
            bad = [r for r in mine if not r["ok"]]
            crashed = code not in (0, 1) or not rec.get("done") or rec.get("error")
            if bad or crashed or len(mine) != expected_per_rank:
                lines = [
                    f"rank {rank} (B_r = {self.sizes[rank]}): exit code {code}, done={rec.get('done')}, "
                    f"{len(mine)}/{expected_per_rank} {kind} checks ran, {len(bad)} failed"
                ]
                lines += [f"  FAIL {r['name']}: {r['msg']}" for r in bad]
                if rec.get("error"):
                    lines.append("  error: " + rec["error"])
                if crashed:
                    lines.append("  log tail:\n" + _tail(log))
                report.append("\n".join(lines))
        if self.problem or report:
            pytest.fail(
                f"gloo group with local batch sizes {self.sizes} ({kind}): {self.problem or 'checks failed'}\n"
                + "\n".join(report),
                pytrace=False,
            )


def launch(tmp: Path, sizes: list[int], modes: str, backends: list[str]) -> Group:
    """Run one gloo group of len(sizes) worker processes (init through a FileStore in tmp) to the end."""
    world = len(sizes)
    out = tmp / "results"
    out.mkdir()
    env = gloo_env()
    procs, logs = [], []
    for rank in range(world):
        log = tmp / f"rank{rank}.log"
        logs.append(log)
        cmd = [
            sys.executable, str(WORKER), "--rank", str(rank), "--world", str(world),
            "--init", str(tmp / "filestore"), "--out", str(out), "--sizes", ",".join(map(str, sizes)),
            "--modes", modes, "--backends", ",".join(backends), "--timeout", str(COLLECTIVE_TIMEOUT_S),
        ]
        with open(log, "wb") as fh:
            procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(REPO)))

    start, joined, first_crash, problem = time.monotonic(), None, None, None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            break
        now = time.monotonic()
        if joined is None and all((out / f"rank{r}.ready").exists() for r in range(world)):
            joined = now
        if first_crash is None and any(c not in (None, 0, 1) for c in codes):
            first_crash = now
        if joined is None and now - start > START_TIMEOUT_S:
            problem = f"the ranks had not all joined the group within {START_TIMEOUT_S:.0f} s; killed"
        elif joined is not None and now - joined > JOIN_TIMEOUT_S:
            problem = f"the group did not finish within {JOIN_TIMEOUT_S:.0f} s of joining (hang?); killed"
        elif first_crash is not None and now - first_crash > GRACE_S:
            problem = f"a rank crashed and the others had not finished {GRACE_S:.0f} s later; killed"
        if problem:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for p in procs:
                p.wait(timeout=30)
            break
        time.sleep(0.05)

    records = []
    for rank in range(world):
        try:
            records.append(json.loads((out / f"rank{rank}.json").read_text()))
        except (OSError, ValueError) as exc:
            records.append({"rank": rank, "done": False, "results": [], "error": f"no result file: {exc}"})
    return Group(sizes, records, [p.returncode for p in procs], logs, problem)


# Local batch sizes whose group also runs the DDP checks (DDP's first use imports torch._dynamo: ~2.5 s of
# CPU per process, so not every group does).
DDP_SIZES = [[4, 4], [5, 7, 4]]
# Equal local sizes (open_clip's local_loss needs them) whose group also checks clip_loss against open_clip.
OPEN_CLIP_SIZES = [[4, 4], [3, 3, 3]]


@pytest.fixture(scope="module")
def group(tmp_path_factory, backends):
    """group(sizes) -> Group: one process group per local-size tuple runs all its checks, once per module."""
    cache: dict[tuple[int, ...], Group] = {}

    def get(sizes) -> Group:
        key = tuple(sizes)
        if key not in cache:
            tmp = tmp_path_factory.mktemp("gloo-" + "-".join(map(str, key)))
            modes = "loss,ddp,clip" if list(key) in DDP_SIZES else "loss"
            if list(key) in OPEN_CLIP_SIZES:
                modes += ",open_clip"
            cache[key] = launch(tmp, list(key), modes, backends[0])
        return cache[key]

    return get


def check_sums(results: list[list[dict]], sizes: list[int]) -> None:
    """Σ_r B_r·V·loss_r (each loss the mean over the rank's B_r·V rows) equals the global sum of row losses."""
    by_name = [{r["name"]: r for r in rank_results} for rank_results in results]
    names = list(by_name[0])
    assert names and all(set(b) == set(names) for b in by_name)
    bad = []
    for name in names:
        entries = [b[name] for b in by_name]
        assert [e["n"] for e in entries] == sizes
        got = sum(e["n"] * e["v"] * e["local_loss"] for e in entries)  # B_r·V rows
        want = entries[0]["global_sum"]
        tol = 1e-9 if "float64" in name else 2e-5
        if not math.isclose(got, want, rel_tol=tol, abs_tol=tol):
            bad.append(f"{name}: sum_r B_r*V*loss_r = {got!r}, global sum = {want!r}")
    assert not bad, "\n".join(bad)


def _skip_if_cpu_missing(backends):
    if backends[1]:
        pytest.skip(f"reference backend checked; the 'cpu' backend is unavailable: {backends[1]}")


# 3 objectives x 2 decoupled x V in (2, 3) in float64, + 3 objectives in float32: per backend
LOSS_CHECKS = 15
DDP_CHECKS = 12  # 3 objectives x 2 decoupled x reduction mean / global_mean
CLIP_CHECKS = 3  # cl, nscl, supcon
OPEN_CLIP_CHECKS = 2  # normalize False / True


@pytest.mark.parametrize("sizes", [[4, 4], [3, 3, 3]], ids=["world2", "world3"])
def test_equal_local_batches(group, sizes, backends):
    g = group(sizes)
    g.check("loss", LOSS_CHECKS * len(backends[0]))
    check_sums(g.results("loss"), sizes)
    _skip_if_cpu_missing(backends)


@pytest.mark.parametrize(
    "sizes", [[6, 3], [5, 7, 4], [1, 4, 2]], ids=["world2-6-3", "world3-5-7-4", "world3-1-4-2"]
)
def test_unequal_local_batches(group, sizes, backends):
    g = group(sizes)
    g.check("loss", LOSS_CHECKS * len(backends[0]))
    check_sums(g.results("loss"), sizes)
    _skip_if_cpu_missing(backends)


@pytest.mark.parametrize("sizes", DDP_SIZES, ids=["world2-equal", "world3-5-7-4"])
def test_ddp_parameter_gradients(group, sizes, backends):
    group(sizes).check("ddp", DDP_CHECKS * len(backends[0]))
    _skip_if_cpu_missing(backends)


@pytest.mark.parametrize("sizes", DDP_SIZES, ids=["world2-equal", "world3-5-7-4"])
def test_two_tower_local_rows_against_all_columns(group, sizes, backends):
    """clip_loss under a process group (open_clip's local_loss with gathered, differentiable columns): each
    rank's loss, a/b gradients of Σ_r loss_r and its logit_scale gradient, against one process."""
    group(sizes).check("clip", CLIP_CHECKS * len(backends[0]))
    _skip_if_cpu_missing(backends)


@pytest.mark.parametrize("sizes", OPEN_CLIP_SIZES, ids=["world2", "world3"])
def test_two_tower_matches_open_clip_local_loss(group, sizes, backends):
    """clip_loss under a process group against the installed open_clip (a declared test dependency: an import
    failure in the workers fails this test): ClipLoss(local_loss=True, gather_with_grad=True) on each rank's
    rows gives the same loss and the same a, b and logit_scale gradients, normalize=False and True."""
    group(sizes).check("open_clip", OPEN_CLIP_CHECKS * len(backends[0]))
    _skip_if_cpu_missing(backends)
