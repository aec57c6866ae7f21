"""The static bar of the GPU kernels, checked without a GPU (`python -m clnscl.kernels`): every launch the
Triton ops can make on Hopper — fp32 (tf32x3 and tf32 dots), bf16, fp16 × every feature bucket up to the
ops' limit × the general forward and four backward variants, the symmetric forward and backward and the
cross forward × row counts that are and are not multiples of 16 —
compiles for sm_90 without spilling registers, within one block's shared memory, on wgmma (HGMMA)."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed: there are no Triton kernels to compile")

from clnscl.kernels import BLOCK_KINDS, DTYPES, KERNELS, SHARED_LIMIT  # noqa: E402
from clnscl.loss.triton.ops import MAX_D, launched  # noqa: E402  (imported under TRITON_INTERPRET: no launch)
from tests.support.processes import REPO, repo_env  # noqa: E402

BUCKETS = [1 << k for k in range(4, MAX_D.bit_length())]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """The report's rows for sm_90, compiled by two processes at once (each half of the dtypes), the tensor
    cores read off the PTX (test_ptx_and_sass_agree_on_the_tensor_cores checks that this is what SASS says)."""
    out = tmp_path_factory.mktemp("kernels")
    env = repo_env()
    env.pop("TRITON_INTERPRET", None)  # the interpreter compiles nothing
    halves = (list(DTYPES)[:2], list(DTYPES)[2:])
    procs = [subprocess.Popen([sys.executable, "-m", "clnscl.kernels", "--sm", "90", "--from-ptx",
                               "--json", str(out / f"{i}.json"), "--dtypes", *half], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO) for i, half in enumerate(halves)]
    logs = [p.communicate(timeout=1500)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return [row for i in range(2) for row in json.loads((out / f"{i}.json").read_text())["triton"]]


def test_every_launch_is_compiled(rows):
    seen = {(r["dtype"], r["d"], r["kernel"], r["n"] % 16 == 0) for r in rows}
    expected = {(t, d, k) for t in DTYPES for d in BUCKETS for k in KERNELS
                if launched(BLOCK_KINDS[k], DTYPES[t][0], d, 90)}
    assert seen == {(t, d, k, aligned) for t, d, k in expected for aligned in (True, False)}


def test_no_launch_spills(rows):
    assert [r for r in rows if r["stack"] != 0] == []


def test_every_launch_fits_one_blocks_shared_memory(rows):
    assert [r for r in rows if r["shared"] > SHARED_LIMIT[90]] == []


def test_every_launch_runs_on_hoppers_tensor_cores(rows):
    assert [r for r in rows if "HGMMA" not in r["tensor_cores"]] == []
    assert all(r["problems"] == [] for r in rows)


def test_the_16bit_backward_stays_under_the_register_cap_up_to_d_256(rows):
    """Below the 255-register cap wherever the 16-bit backward keeps a whole feature block (d ≤ 256)."""
    capped = [r for r in rows if r["kernel"].startswith("backward") and r["dtype"] in ("bf16", "fp16")
              and r["d"] <= 256 and r["registers"] >= 255]
    assert capped == []


@pytest.mark.parametrize("dtype,kernels", [("bf16", ["forward", "backward", "symmetric forward"]),
                                           ("fp32 (tf32x3)", ["backward rows", "symmetric backward",
                                                              "cross forward"])])
def test_ptx_and_sass_agree_on_the_tensor_cores(tmp_path, dtype, kernels):
    """The grid above reads wgmma off the PTX; on a sample of launches, the SASS holds HGMMA exactly where the
    PTX holds wgmma.mma_async, and HMMA where it holds mma.sync (sm_80)."""
    env = repo_env()
    env.pop("TRITON_INTERPRET", None)
    found = {}
    for mode in ("sass", "ptx"):
        out = tmp_path / f"{mode}.json"
        done = subprocess.run([sys.executable, "-m", "clnscl.kernels", "--sm", "90", "80", "--dtypes", dtype,
                               "--kernels", *kernels, "--d", "64", "--json", str(out),
                               *(["--from-ptx"] if mode == "ptx" else [])],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        found[mode] = {(r["sm"], r["kernel"], r["n"]): (r["tensor_cores"], r["registers"], r["stack"])
                       for r in json.loads(out.read_text())["triton"]}
    assert found["ptx"] == found["sass"] and {k for sm, k, _ in found["sass"] if sm == 90} == set(kernels)
    assert {sm for sm, _, _ in found["sass"]} == {90, 80}
    assert {v[0] for (sm, _, _), v in found["sass"].items() if sm == 90} == {"HGMMA"}


def test_each_target_is_compiled_for_itself(tmp_path):
    """One process compiling for sm_90 and then sm_80 gets wgmma for the first and mma.sync for the second
    (triton keeps a target per kernel and device: the report must not reuse the first)."""
    env = repo_env()
    env.pop("TRITON_INTERPRET", None)
    out = tmp_path / "both.json"
    done = subprocess.run([sys.executable, "-m", "clnscl.kernels", "--sm", "90", "80", "--dtypes", "bf16",
                           "--kernels", "forward", "--d", "16", "--json", str(out)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())["triton"]
    assert {r["sm"]: r["tensor_cores"] for r in rows} == {90: "HGMMA", 80: "HMMA"}
