"""Multi-process tests of `contrastive_loss(..., process_group=...)` on gloo (DESIGN.md §2, Distributed).

Each test starts one process group of 2 or 3 CPU subprocesses (tests/_dist_worker.py) that runs many
configurations — objectives cl / nscl / supcon × decoupled, backends reference and cpu, V = 2 and 3, d = 13
or 7 — on different seeded rows per rank, and checks in every rank against the single-process reference on
the concatenated global batch:
  - the value is the mean of the reference's reduction='none' rows of this rank ('none' and 'sum' too);
  - z.grad is the gradient of Σ_ranks (local mean) w.r.t. this rank's rows, i.e. world_size × the gradient
    of the global mean when the local batch sizes are equal (float64, rtol 1e-9);
  - with unequal local batch sizes it works, and Σ_r B_r·V·loss_r is the global sum (checked here);
  - labels with three classes spread over all ranks, so Same(a) spans ranks, plus one singleton class;
  - under DDP the averaged parameter gradients equal those of one process on the global batch.
A group that hangs is killed after a timeout and the test fails with each rank's log.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"),
]

WORKER = Path(__file__).with_name("_dist_worker.py")
REPO = Path(__file__).resolve().parents[1]
JOIN_TIMEOUT_S = 120.0  # the whole group; a hang fails the test instead of blocking CI
COLLECTIVE_TIMEOUT_S = 60.0  # gloo timeout inside the workers
GRACE_S = 10.0  # after one rank fails, how long the others may take to finish on their own


@pytest.fixture(scope="module")
def backends() -> tuple[list[str], str | None]:
    """Backends to run in the workers; the C++ op is built here once, not concurrently by every rank."""
    from clnscl.backends import BACKENDS

    why = BACKENDS["cpu"].unavailable()
    return (["reference"], why) if why else (["reference", "cpu"], None)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as exc:
        return f"<no log: {exc}>"


def launch(tmp_path: Path, sizes: list[int], mode: str, backends: list[str]) -> list[dict]:
    """Run one gloo group of len(sizes) worker processes; return each rank's result record."""
    world = len(sizes)
    out = tmp_path / "results"
    out.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the loopback: no dependence on the host name resolving
    procs, logs = [], []
    for rank in range(world):
        log = tmp_path / f"rank{rank}.log"
        logs.append(log)
        cmd = [
            sys.executable, str(WORKER), "--rank", str(rank), "--world", str(world),
            "--init", str(tmp_path / "filestore"), "--out", str(out), "--sizes", ",".join(map(str, sizes)),
            "--mode", mode, "--backends", ",".join(backends), "--timeout", str(COLLECTIVE_TIMEOUT_S),
        ]
        with open(log, "wb") as fh:
            procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(REPO)))

    start, first_failure, problem = time.monotonic(), None, None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            break
        now = time.monotonic()
        if first_failure is None and any(c not in (None, 0) for c in codes):
            first_failure = now
        if now - start > JOIN_TIMEOUT_S:
            problem = f"process group did not finish within {JOIN_TIMEOUT_S:.0f} s (hang?)"
        elif first_failure is not None and now - first_failure > GRACE_S:
            problem = f"a rank failed and the others had not finished {GRACE_S:.0f} s later"
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
        path = out / f"rank{rank}.json"
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            records.append({"rank": rank, "done": False, "results": [], "error": f"no result file: {exc}"})

    report = []
    for rank, (p, rec, log) in enumerate(zip(procs, records, logs)):
        bad = [r for r in rec["results"] if not r["ok"]]
        if p.returncode != 0 or not rec.get("done") or bad or rec.get("error"):
            lines = [f"rank {rank} (B_r = {sizes[rank]}): exit code {p.returncode}, done={rec.get('done')}"]
            lines += [f"  FAIL {r['name']}: {r['msg']}" for r in bad]
            if rec.get("error"):
                lines.append("  error: " + rec["error"])
            lines.append("  log tail:\n" + _tail(log))
            report.append("\n".join(lines))
    if problem or report:
        pytest.fail(
            f"distributed group sizes={sizes} mode={mode}: {problem or 'checks failed'}\n" + "\n".join(report),
            pytrace=False,
        )
    return records


def check_sums(records: list[dict], sizes: list[int]) -> None:
    """Σ_r B_r·V·loss_r (each loss the mean over the rank's B_r·V rows) equals the global sum of row losses."""
    by_name = [{r["name"]: r for r in rec["results"]} for rec in records]
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


def _run_loss_group(tmp_path, sizes, backends):
    names, why = backends
    records = launch(tmp_path, sizes, "loss", names)
    check_sums(records, sizes)
    # 3 objectives x 2 decoupled x 2 V (float64) + 3 objectives (float32), per backend
    assert len(records[0]["results"]) == 15 * len(names)
    if why:
        pytest.skip(f"reference backend checked; the 'cpu' backend is unavailable: {why}")


@pytest.mark.parametrize(
    "sizes",
    [[4, 4], [3, 3, 3]],
    ids=["world2-equal", "world3-equal"],
)
def test_equal_local_batches(tmp_path, sizes, backends):
    _run_loss_group(tmp_path, sizes, backends)


@pytest.mark.parametrize(
    "sizes",
    [[6, 3], [5, 7, 4], [1, 4, 2]],
    ids=["world2-6-3", "world3-5-7-4", "world3-1-4-2"],
)
def test_unequal_local_batches(tmp_path, sizes, backends):
    _run_loss_group(tmp_path, sizes, backends)


@pytest.mark.parametrize("sizes", [[4, 4], [3, 3, 3]], ids=["world2", "world3"])
def test_ddp_parameter_gradients(tmp_path, sizes, backends):
    names, why = backends
    records = launch(tmp_path, sizes, "ddp", names)
    assert len(records[0]["results"]) == 6 * len(names)
    if why:
        pytest.skip(f"reference backend checked; the 'cpu' backend is unavailable: {why}")
