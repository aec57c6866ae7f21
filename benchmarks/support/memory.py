"""Peak memory "above the inputs" of one call, each measurement in a fresh subprocess.

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

`measure_peak` probes a loss method (this module run as `python -m benchmarks.support.memory --method ...`);
`run_probe` runs another benchmark module's own `--probe` mode the same way.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from .losses import D, Method, get_method, make_inputs, make_step

ROOT = Path(__file__).resolve().parents[2]


def proc_status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_above(fn) -> tuple[object, float, int]:
    """(fn(), its seconds, the bytes of resident memory it touched above what the process held before it)."""
    reset_hwm()
    base = (proc_status_kib("VmRSS") or 0) * 1024
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, (proc_status_kib("VmHWM") or 0) * 1024 - base


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
        reset = reset_hwm()
        base = (proc_status_kib("VmRSS") or 0) * 1024
        loss = step()
        if reset:
            peak, how = proc_status_kib("VmHWM") * 1024, "VmHWM"
        else:
            peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    return {"extra_bytes": max(peak - base, 0), "baseline_bytes": base, "method": how, "loss": float(loss)}


def measure_peak(method: Method, n: int, d: int = D, dtype: torch.dtype = torch.float32, device: str = "cpu",
                 timeout: float = 1800) -> dict:
    """Peak memory above the inputs of one forward + backward of `method`, in a fresh subprocess.

    Returns the probe's dict (extra_bytes, baseline_bytes, method, loss) or {"error": "..."} if it failed."""
    cmd = [sys.executable, "-m", __name__, "--method", method.name, "--objective", method.objective,
           "--n", str(n), "--d", str(d), "--dtype", str(dtype).removeprefix("torch."), "--device", device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(PYTHONWARNINGS="ignore"),
                              cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"error": f"memory probe failed (exit {proc.returncode}): {tail[:300]}"}
    return json.loads(lines[-1])


def _env(**extra: str) -> dict:
    """This environment with the repository first on PYTHONPATH (the benchmarks are modules of it)."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_probe(module: str, *args: str, **label) -> dict:
    """Run `python -m module --probe args...` in a fresh process; its last line of output is a JSON dict. On
    failure: `label` plus "error" (the last line of stderr)."""
    out = subprocess.run([sys.executable, "-m", module, "--probe", *args], capture_output=True, text=True,
                         timeout=3600, env=_env(), cwd=ROOT)
    if out.returncode != 0:
        why = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
        return {**label, "error": why}
    return json.loads(out.stdout.strip().splitlines()[-1])



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
