"""Shared pieces of the benchmarks: the inputs, the methods compared, and the peak-memory probe.

Every method is timed on the same work: forward + backward of a contrastive loss of z (B, V, d), V = 2 views,
temperature 0.1, labels drawn uniformly from 100 classes (needed by nscl / supcon). The peers get the same
rows in their own layouts (lightly: two (B, d) views; pytorch-metric-learning: (N, d) rows with per-row labels,
instance ids for NT-Xent, class labels for SupCon) and compute the same numbers (checked by the tests).

Peak memory "above the inputs" is measured by `measure_peak` in a fresh subprocess (this file run as a script):

* CPU. torch's CPU allocator keeps no statistics and tracemalloc does not see it, so the probe reads the
  kernel's resident-set high-water mark. In a fresh process it builds the inputs, warms the method up on a tiny
  batch (loads the C++ ops, imports the peer, starts the OpenMP pool), then writes "5" to /proc/self/clear_refs,
  which resets the high-water mark VmHWM to the current RSS (Linux >= 4.0), reads that RSS as the baseline, runs
  forward + backward once and reads VmHWM again. extra = VmHWM - baseline: every page touched by the call,
  outputs and z.grad included, but not the inputs, the interpreter or the libraries. A fresh process per
  measurement keeps one method's freed-but-cached memory out of the next one's figure. Where clear_refs
  cannot be written the probe falls back to ru_maxrss - baseline, an upper bound (the import peak may exceed
  the call's), and says so in the result ("method": "ru_maxrss").
* CUDA. torch.cuda.max_memory_allocated() after torch.cuda.reset_peak_memory_stats(), minus the memory
  allocated before the call (the inputs): what the caching allocator handed out, not what it reserved.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install` (the GPU script does that)
    sys.path.insert(0, str(ROOT))

import clnscl  # noqa: E402

TEMPERATURE = 0.1
NUM_CLASSES = 100
VIEWS = 2
D = 128
GiB = 1024**3
MEMORY_LIMIT = float(os.environ.get("CLNSCL_BENCH_MEMORY_LIMIT_GB", "16")) * GiB  # skip a run estimated above


@dataclass(frozen=True)
class Method:
    name: str
    objective: str  # the clnscl objective it computes: "cl", "nscl" or "supcon"
    module: str | None  # the optional package it needs (None: clnscl itself)
    # bytes above the inputs as a function of N (rows), d: a rough model fitted to this probe on CPU, fp32,
    # with a margin; used only to skip runs that would not fit in memory.
    memory_model: Callable[[int, int], float]


def _quadratic(bytes_per_pair):
    return lambda n, d: bytes_per_pair * n * n + 64 * n * d


# Coefficients from the probe on this repository's CPU machine (fp32, N = 1024 to 4096, extra bytes / N²):
# reference 28-43, lightly 18-23, pml SupCon 47-58; rounded up. pml's NTXentLoss builds (positive pairs) x
# (negative pairs) matrices, N·N(N-2) elements at ~17 bytes each (N = 256, 512): cubic in N.
PEERS = {
    "lightly-ntxent": Method("lightly-ntxent", "cl", "lightly", _quadratic(30)),
    "pml-ntxent": Method("pml-ntxent", "cl", "pytorch_metric_learning", lambda n, d: 20.0 * n * n * max(n - 2, 1)),
    "pml-supcon": Method("pml-supcon", "supcon", "pytorch_metric_learning", _quadratic(52)),
}
CLNSCL_BACKENDS = ("reference", "cpu", "cuda", "triton")
REFERENCE_MODEL = _quadratic(48)


def clnscl_method(backend: str, objective: str) -> Method:
    model = REFERENCE_MODEL if backend == "reference" else (lambda n, d: 64.0 * n * d + 64 * 2**20)
    return Method(f"clnscl-{backend}", objective, None, model)


def get_method(name: str, objective: str | None = None) -> Method:
    if name in PEERS:
        return PEERS[name]
    backend = name.removeprefix("clnscl-")
    if backend not in CLNSCL_BACKENDS or objective is None:
        raise ValueError(f"unknown method {name!r} (objective {objective!r})")
    return clnscl_method(backend, objective)


def flops(n: int, d: int) -> float:
    """The GPU bar's count for forward + backward: 8·N²·d (four N×N×d GEMMs, no symmetry discount)."""
    return 8.0 * n * n * d


def make_inputs(n: int, d: int = D, dtype=torch.float32, device="cpu", seed: int = 0):
    """z (B, V, d) leaf with requires_grad, labels (B,) int64 in [0, NUM_CLASSES); N = B·V = n."""
    if n % VIEWS:
        raise ValueError(f"N = {n} is not a multiple of V = {VIEWS}")
    gen = torch.Generator().manual_seed(seed)
    b = n // VIEWS
    z = torch.randn(b, VIEWS, d, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    labels = torch.randint(0, NUM_CLASSES, (b,), generator=gen).to(device)
    return z, labels


def loss_fn(method: Method) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function (z, labels) -> scalar loss for `method` (the peers' modules are built once here)."""
    obj = method.objective
    if method.name.startswith("clnscl-"):
        backend = method.name.removeprefix("clnscl-")

        def run(z, labels):
            return clnscl.contrastive_loss(
                z, None if obj == "cl" else labels, objective=obj, temperature=TEMPERATURE, backend=backend
            )

        return run
    if method.name == "lightly-ntxent":
        from lightly.loss import NTXentLoss

        crit = NTXentLoss(temperature=TEMPERATURE, memory_bank_size=0)
        return lambda z, labels: crit(z[:, 0], z[:, 1])
    from pytorch_metric_learning import losses

    if method.name == "pml-ntxent":
        crit = losses.NTXentLoss(temperature=TEMPERATURE)

        def run(z, labels):
            b, v, d = z.shape
            return crit(z.reshape(b * v, d), torch.arange(b, device=z.device).repeat_interleave(v))

        return run
    if method.name == "pml-supcon":
        crit = losses.SupConLoss(temperature=TEMPERATURE)

        def run(z, labels):
            b, v, d = z.shape
            return crit(z.reshape(b * v, d), labels.repeat_interleave(v))

        return run
    raise ValueError(method.name)


def make_step(method: Method, z: torch.Tensor, labels: torch.Tensor) -> Callable[[], torch.Tensor]:
    """step() runs forward + backward once (z.grad reset first) and returns the detached loss; on CUDA it
    synchronises so that a wall-clock timer around it is right."""
    fn = loss_fn(method)
    cuda = z.device.type == "cuda"

    def step():
        z.grad = None
        loss = fn(z, labels)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        return loss.detach()

    return step


def unavailable(method: Method, device: str = "cpu") -> str | None:
    """Why `method` cannot run here, or None."""
    if method.module is not None:
        import importlib.util

        if device == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"

        if importlib.util.find_spec(method.module) is None:
            return f"{method.module} is not installed"
        return None
    backend = method.name.removeprefix("clnscl-")
    from clnscl import backends

    b = backends.BACKENDS[backend]
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    return b.unavailable() or b.unsupported(torch.empty(2, 2, 4, device=device))


def too_big(method: Method, n: int, d: int = D) -> str | None:
    """A skip reason if the memory model puts this run above MEMORY_LIMIT, else None."""
    est = method.memory_model(n, d)
    if est > MEMORY_LIMIT:
        return (f"{method.name} at N = {n} would need about {est / GiB:.0f} GiB above the inputs "
                f"(limit {MEMORY_LIMIT / GiB:.0f} GiB; set CLNSCL_BENCH_MEMORY_LIMIT_GB to change it)")
    return None


def median_time(step: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] if len(times) % 2 else 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2]), times


# ------------------------------------------------------------------------------------------------ memory probe

def _proc_status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def probe(method: Method, n: int, d: int, dtype: torch.dtype, device: str) -> dict:
    """Run in the fresh subprocess: peak bytes of one forward + backward above the inputs (see module doc)."""
    z, labels = make_inputs(n, d, dtype, device)
    warm_z, warm_labels = make_inputs(min(n, 64), d, dtype, device, seed=1)
    make_step(method, warm_z, warm_labels)()  # build/load the ops, import the peer, start the thread pool
    del warm_z, warm_labels
    step = make_step(method, z, labels)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = step()
        peak = torch.cuda.max_memory_allocated()
        how = "torch.cuda.max_memory_allocated"
    else:
        reset = _reset_hwm()
        base = (_proc_status_kib("VmRSS") or 0) * 1024
        loss = step()
        if reset:
            peak, how = _proc_status_kib("VmHWM") * 1024, "VmHWM"
        else:
            peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    return {"extra_bytes": max(peak - base, 0), "baseline_bytes": base, "method": how, "loss": float(loss)}


def measure_peak(method: Method, n: int, d: int = D, dtype: torch.dtype = torch.float32, device: str = "cpu",
                 timeout: float = 1800) -> dict:
    """Peak memory above the inputs of one forward + backward of `method`, in a fresh subprocess.

    Returns the probe's dict (extra_bytes, baseline_bytes, method, loss) or {"error": "..."} if it failed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--method", method.name, "--objective", method.objective,
           "--n", str(n), "--d", str(d), "--dtype", str(dtype).removeprefix("torch."), "--device", device]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONWARNINGS"] = "ignore"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"error": f"memory probe failed (exit {proc.returncode}): {tail[:300]}"}
    return json.loads(lines[-1])


def run_probe_script(script: str, *args: str, **label) -> dict:
    """Run `script --probe args...` in a fresh process; its last line of output is a JSON dict. On failure:
    `label` plus "error" (the last line of stderr)."""
    out = subprocess.run([sys.executable, script, "--probe", *args], capture_output=True, text=True, timeout=3600,
                         env=dict(os.environ))
    if out.returncode != 0:
        return {**label, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_bytes(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}" if unit == "GiB" else f"{x / scale:.1f} {unit}"
    return f"{x:.0f} B"


def fmt_time(t: float | None) -> str:
    if t is None:
        return "n/a"
    return f"{t:.2f} s" if t >= 1 else f"{t * 1e3:.1f} ms" if t >= 1e-3 else f"{t * 1e6:.0f} µs"


def main(argv=None):
    p = argparse.ArgumentParser(description="peak memory of one forward + backward, above the inputs (JSON line)")
    p.add_argument("--method", required=True)
    p.add_argument("--objective", default=None)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--d", type=int, default=D)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    method = get_method(a.method, a.objective)
    print(json.dumps(probe(method, a.n, a.d, getattr(torch, a.dtype), a.device)), flush=True)


if __name__ == "__main__":
    main()
