"""Compact GPU benchmark of the loss for scripts/gpu_check.sh (`python -m benchmarks.loss.gpu_bench`): one short
table, written again after every row.

1. Correctness at N = --check-n (default 4096), fp32: loss and gradient of the triton and cuda backends
   against the float64 reference, for cl / nscl / supcon, decoupled or not.
2. Speed at N = --n (default 65,536), d = 128, nscl forward + backward, bf16 then fp32, backends triton, cuda,
   reference: median time, TFLOP/s counted as 8·N²·d / time (docs/design.md §7), speed-up over the reference,
   peak memory above the inputs (torch.cuda.max_memory_allocated). If the reference runs out of GPU memory at
   N, the reference and triton are also measured at N/2 so that a speed-up can still be read.

Runs from a checkout without installing (the repository on PYTHONPATH, as gpu_check.sh sets it). --dry-run: tiny sizes on the
CPU (triton under TRITON_INTERPRET=1, the C++ "cpu" backend standing in), to catch errors without a GPU.
A time budget (--budget seconds) skips what no longer fits, so the table always comes out.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
import traceback
import zlib

if "--dry-run" in sys.argv:  # must precede the first import of triton / clnscl
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

import clnscl  # noqa: E402
from benchmarks.support.fmt import fmt_bytes, fmt_time  # noqa: E402
from benchmarks.support.losses import clnscl_method, flops, make_inputs, make_step, unavailable  # noqa: E402

OBJECTIVES = [("cl", False), ("cl", True), ("nscl", False), ("nscl", True), ("supcon", False), ("supcon", True)]


class Report:
    """Collects the rows and rewrites the whole report (stdout at the end, --out after every row)."""

    def __init__(self, out: str | None, header: list[str]):
        self.out = out
        self.header = header
        self.check_rows: list[str] = []
        self.speed_rows: list[str] = []
        self.notes: list[str] = []

    def text(self) -> str:
        lines = list(self.header)
        lines += ["", "Correctness (fp32, against the float64 reference):", "",
                  "| objective | decoupled | backend | N | loss rel. err | max grad err / max grad | result |",
                  "| --- | --- | --- | --- | --- | --- | --- |", *self.check_rows]
        lines += ["", "Speed (nscl, forward + backward; TFLOP/s = 8·N²·d / time):", "",
                  "| dtype | backend | N | time (median) | TFLOP/s | × reference | peak mem above inputs | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |", *self.speed_rows]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def flush(self):
        if self.out:
            tmp = self.out + ".tmp"
            with open(tmp, "w") as f:
                f.write(self.text())
            os.replace(tmp, self.out)


def free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def correctness(report, backends, n, d, device, deadline):
    for objective, decoupled in OBJECTIVES:
        gen = torch.Generator().manual_seed(zlib.crc32(repr((objective, decoupled)).encode()))
        b = n // 2
        z0 = torch.randn(b, 2, d, generator=gen)
        labels = torch.randint(0, 100, (b,), generator=gen).to(device)
        lab = None if objective == "cl" else labels
        w = torch.rand(b, 2, generator=gen, dtype=torch.float64).to(device)  # random combination of row losses
        kw = dict(objective=objective, decoupled=decoupled, temperature=0.1, reduction="none")
        zr = z0.to(device, torch.float64).clone().requires_grad_()
        ref = clnscl.contrastive_loss(zr, lab, backend="reference", **kw)
        (ref * w).sum().backward()
        ref_loss = (ref * w).sum().item()
        for backend in backends:
            cells = f"| {objective} | {decoupled} | {backend} | {n} |"
            why = unavailable(clnscl_method(backend, objective), device)
            if why:
                report.check_rows.append(f"{cells} — | — | unavailable: {why} |")
                continue
            if time.time() > deadline:
                report.check_rows.append(f"{cells} — | — | skipped: out of time budget |")
                continue
            try:
                zt = z0.to(device, torch.float32).clone().requires_grad_()
                rows = clnscl.contrastive_loss(zt, lab, backend=backend, **kw)
                (rows.double() * w).sum().backward()
                sync(device)
                lerr = abs((rows.double() * w).sum().item() - ref_loss) / abs(ref_loss)
                gerr = ((zt.grad.double() - zr.grad).abs().max() / zr.grad.abs().max()).item()
                ok = lerr <= 1e-4 and gerr <= 1e-3 and rows.dtype == torch.float32
                report.check_rows.append(f"{cells} {lerr:.1e} | {gerr:.1e} | {'ok' if ok else 'FAIL'} |")
            except Exception as exc:  # report and go on: the table must come out
                report.check_rows.append(f"{cells} — | — | ERROR {first_line(exc)} |")
                report.notes.append(f"{backend} {objective} decoupled={decoupled}: {traceback.format_exc(limit=3)!r}")
            report.flush()
        del zr, ref
        free()


def measure(backend, n, d, dtype, device, repeats, deadline):
    """dict(time, extra) or dict(error) / dict(skipped)."""
    method = clnscl_method(backend, "nscl")
    why = unavailable(method, device)
    if why:
        return {"skipped": f"unavailable: {why}"}
    if time.time() > deadline:
        return {"skipped": "out of time budget"}
    free()  # what an earlier failed call may have left
    z = labels = step = None
    try:
        z, labels = make_inputs(n, d, dtype, device)
        step = make_step(method, z, labels)
        t0 = time.perf_counter()
        step()  # warm-up: JIT compilation, autotuning, the ops' first load
        sync(device)
        warm = time.perf_counter() - t0
        extra = None
        if device == "cuda":
            z.grad = None
            free()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            step()
            warm = min(warm, time.perf_counter() - t0)
            extra = torch.cuda.max_memory_allocated() - base
        left = deadline - time.time()
        reps = max(1, min(repeats, int(left / max(warm, 1e-3) / 2)))
        times = []
        for _ in range(reps):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
        times.sort()
        return {"time": times[len(times) // 2], "reps": reps, "extra": extra}
    except torch.cuda.OutOfMemoryError as exc:
        return {"error": f"out of GPU memory ({first_line(exc)[:100]})", "oom": True}
    except Exception as exc:
        return {"error": f"ERROR {first_line(exc)}"}
    finally:
        del z, labels, step
        free()


def speed(report, backends, n, d, dtype, device, repeats, deadline):
    res = {}
    name = str(dtype).removeprefix("torch.")
    for backend in backends:
        res[backend] = measure(backend, n, d, dtype, device, repeats, deadline)
    ref = res.get("reference", {})
    for backend, r in res.items():
        cells = f"| {name} | {backend} | {n} |"
        if "time" not in r:
            report.speed_rows.append(f"{cells} — | — | — | — | {r.get('skipped') or r.get('error')} |")
            continue
        tflops = flops(n, d) / r["time"] / 1e12
        vs = f"{ref['time'] / r['time']:.1f}×" if "time" in ref else "—"
        mem = fmt_bytes(r["extra"]) if r["extra"] is not None else "n/a (CPU)"
        per_row = (f"{r['extra'] / (n * d * dtype.itemsize):.1f}× N·d·{dtype.itemsize}B"
                   if r["extra"] is not None else "")
        report.speed_rows.append(f"{cells} {fmt_time(r['time'])} | {tflops:.3g} | {vs} | {mem} | "
                                 f"median of {r['reps']}; {per_row} |")
    report.flush()
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description="compact GPU benchmark of the clnscl loss (see the module doc)")
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--check-n", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--budget", type=float, default=240, help="seconds; what does not fit is reported as skipped")
    p.add_argument("--out", default=None, help="markdown file rewritten after every row")
    p.add_argument("--no-fp32", action="store_true", help="bf16 speed rows only")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (no GPU needed)")
    a = p.parse_args(argv)

    started = time.time()
    deadline = started + a.budget
    if a.dry_run:
        device, n, check_n = "cpu", min(a.n, 256), min(a.check_n, 96)
        backends = ["triton", "cuda", "cpu", "reference"]
    else:
        if not torch.cuda.is_available():
            print("gpu_bench: no CUDA device (use --dry-run to exercise the script on the CPU)", file=sys.stderr)
            return 2
        device, n, check_n = "cuda", a.n, a.check_n
        backends = ["triton", "cuda", "reference"]
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU dry run)"
    header = [
        f"## clnscl GPU benchmark{' (DRY RUN on CPU, tiny sizes: not a measurement)' if a.dry_run else ''}",
        "",
        f"device {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); triton {triton_version}; "
        f"Python {platform.python_version()}; d = {a.d}; temperature 0.1; 100 classes; V = 2",
    ]
    report = Report(a.out, header)
    report.flush()

    try:
        correctness(report, [b for b in backends if b != "reference"], check_n, a.d, device, deadline)
    except Exception as exc:
        report.notes.append(f"correctness section failed: {first_line(exc)}")
    dtypes = [torch.bfloat16] + ([] if a.no_fp32 else [torch.float32])
    for dtype in dtypes:
        try:
            res = speed(report, backends, n, a.d, dtype, device, a.repeats, deadline)
            if res.get("reference", {}).get("oom"):
                speed(report, ["triton", "reference"], n // 2, a.d, dtype, device, a.repeats, deadline)
                report.notes.append(f"the reference ran out of GPU memory at N = {n} ({dtype}); N = {n // 2} rows "
                                    "give the speed-up at a size where it fits")
        except Exception as exc:
            report.notes.append(f"speed section {dtype} failed: {first_line(exc)}")
    report.notes.append(f"bars (docs/design.md §7, H200, bf16, N = 65,536): ≥ 300 TFLOP/s, ≥ 5× the reference, memory "
                        f"O(N·d). Wall time of this script: {time.time() - started:.0f} s (budget {a.budget:.0f} s).")
    report.flush()
    print(report.text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
