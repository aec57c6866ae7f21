"""Compact GPU benchmark of the loss for scripts/gpu_check.sh (`python -m benchmarks.loss.gpu_bench`): one short
table, written again after every row.

1. Correctness at N = --check-n (default 4096), fp32: loss and gradient of the Triton backend (symmetric and
   general schedule) and the CUDA backend against the float64 reference, for cl / nscl / supcon, decoupled
   or not.
2. Speed at N = --n (default 65,536), d = 128, nscl, bf16 then fp32: the forward, the backward and both, of
   the Triton backend with the symmetric schedule and with the general one (clnscl.loss.triton.ops.SCHEDULE),
   the CUDA backend, the materialised reference and the same reference under torch.compile. Per part: median
   time (CUDA events), TFLOP/s counted as the bar counts them (2N²d forward, 6N²d backward, 8N²d both: four
   N×N×d GEMMs, no discount for symmetry) and as the work the method does (docs/design.md §5), the speed-up
   over the reference and over the compiled reference, and the peak memory above the inputs
   (torch.cuda.max_memory_allocated). If the reference runs out of GPU memory at N, the reference and the
   Triton backend are measured again at N/2 so that a speed-up can still be read.
3. The bars of docs/design.md §7 checked on the bf16 rows.
4. The two-tower loss (clip_loss: both directions from the cross op): correctness at N = --check-n, fp32, at
   logit scales 14 (the fixed-shift kernel) and 60 (a running max per side) against the float64 reference;
   forward + backward time and peak memory at --clip-n pairs (default 16,384), d = 512, bf16, of the Triton
   and CUDA backends and the materialised reference.

Runs from a checkout without installing (the repository on PYTHONPATH, as gpu_check.sh sets it). --dry-run: tiny
sizes on the CPU (triton under TRITON_INTERPRET=1, the C++ "cpu" backend standing in, torch.compile with the
aot_eager backend), so that the script cannot rot without a GPU. A time budget (--budget seconds) skips what
no longer fits, so the table always comes out.
"""
from __future__ import annotations

import argparse
import contextlib
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
from benchmarks.support.losses import TEMPERATURE, clnscl_method, make_inputs, unavailable  # noqa: E402

OBJECTIVES = [("cl", False), ("cl", True), ("nscl", False), ("nscl", True), ("supcon", False), ("supcon", True)]
# name -> (backend, Triton schedule or None, under torch.compile)
VARIANTS = {
    "triton symmetric": ("triton", "auto", False),
    "triton general": ("triton", "general", False),
    "cuda": ("cuda", None, False),
    "cpu": ("cpu", None, False),
    "reference": ("reference", None, False),
    "reference, torch.compile": ("reference", None, True),
}
PARTS = ("fwd", "bwd", "fwd+bwd")
COUNTED = {"fwd": 2, "bwd": 6, "fwd+bwd": 8}  # × N²·d FLOPs: the bar's count
MEMORY_BAR = 64  # peak memory above the inputs at most this many × N·d·itemsize: O(N·d), not O(N²)


class Report:
    """Collects the rows and rewrites the whole report (stdout at the end, --out after every row)."""

    def __init__(self, out: str | None, header: list[str]):
        self.out = out
        self.header = header
        self.check_rows: list[str] = []
        self.speed_rows: list[str] = []
        self.bar_rows: list[str] = []
        self.clip_rows: list[str] = []
        self.notes: list[str] = []

    def text(self) -> str:
        lines = list(self.header)
        lines += ["", "Correctness (fp32, against the float64 reference):", "",
                  "| objective | decoupled | method | N | loss rel. err | max grad err / max grad | result |",
                  "| --- | --- | --- | --- | --- | --- | --- |", *self.check_rows]
        lines += ["", "Speed (nscl; TFLOP/s counted as 2N²d fwd, 6N²d bwd, 8N²d both, and as the work done):", "",
                  "| dtype | method | N | part | time (median) | TFLOP/s counted | TFLOP/s done | × reference "
                  "| × compiled reference | peak mem above inputs | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", *self.speed_rows]
        if self.clip_rows:
            lines += ["", "Two-tower loss (clip_loss, d = 512 (40 in a dry run); forward + backward):", "",
                      "| check / dtype | method | N pairs | loss rel. err or time | max grad err or peak mem "
                      "| result |",
                      "| --- | --- | --- | --- | --- | --- |", *self.clip_rows]
        if self.bar_rows:
            lines += ["", "Bars (bf16, forward + backward):", "", "| bar | measured | result |", "| --- | --- | --- |",
                      *self.bar_rows]
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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


@contextlib.contextmanager
def schedule(name: str | None):
    """The Triton ops' schedule for the forward and the backward inside (None: leave it)."""
    if name is None:
        yield
        return
    from clnscl.loss.triton import ops

    previous, ops.SCHEDULE = ops.SCHEDULE, name
    try:
        yield
    finally:
        ops.SCHEDULE = previous


def work(variant: str, part: str, n: int, d: int, dtype: torch.dtype, device: str) -> float:
    """FLOPs the variant computes (docs/design.md §5). Materialised and CUDA: S (2N²d), then dS·z for both
    sides (4N²d). Triton general: S, then per output chunk S again and P·z once; symmetric: each off-diagonal
    tile once — half of every S, P·z_J and Pᵀ·z_I."""
    backend, sched, _ = VARIANTS[variant]
    num_o = 1
    if backend == "triton":
        from clnscl.loss.triton import ops

        sm = ops.compute_capability(torch.device(device))
        num_o = ops.bucket(d) // ops.blocks("sym_bwd" if sched == "auto" else "bwd", dtype, d, sm).o
    fwd, bwd = {"auto": (1, num_o + 2), "general": (2, 2 * num_o + 2)}.get(sched, (2, 4))
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[part] * float(n) * n * d


def correctness(report, variants, n, d, device, deadline):
    for objective, decoupled in OBJECTIVES:
        gen = torch.Generator().manual_seed(zlib.crc32(repr((objective, decoupled)).encode()))
        b = n // 2
        z0 = torch.randn(b, 2, d, generator=gen)
        labels = torch.randint(0, 100, (b,), generator=gen).to(device)
        lab = None if objective == "cl" else labels
        w = torch.rand(b, 2, generator=gen, dtype=torch.float64).to(device)  # random combination of row losses
        kw = dict(objective=objective, decoupled=decoupled, temperature=TEMPERATURE, reduction="none")
        zr = z0.to(device, torch.float64).clone().requires_grad_()
        ref = clnscl.contrastive_loss(zr, lab, backend="reference", **kw)
        (ref * w).sum().backward()
        ref_loss = (ref * w).sum().item()
        for variant in variants:
            backend, sched, _ = VARIANTS[variant]
            cells = f"| {objective} | {decoupled} | {variant} | {n} |"
            why = unavailable(clnscl_method(backend, objective), device)
            if why:
                report.check_rows.append(f"{cells} — | — | unavailable: {why} |")
                continue
            if time.time() > deadline:
                report.check_rows.append(f"{cells} — | — | skipped: out of time budget |")
                continue
            try:
                zt = z0.to(device, torch.float32).clone().requires_grad_()
                with schedule(sched):
                    rows = clnscl.contrastive_loss(zt, lab, backend=backend, **kw)
                    (rows.double() * w).sum().backward()
                lerr = abs((rows.double() * w).sum().item() - ref_loss) / abs(ref_loss)
                gerr = ((zt.grad.double() - zr.grad).abs().max() / zr.grad.abs().max()).item()
                ok = lerr <= 1e-4 and gerr <= 1e-3 and rows.dtype == torch.float32
                report.check_rows.append(f"{cells} {lerr:.1e} | {gerr:.1e} | {'ok' if ok else 'FAIL'} |")
            except Exception as exc:  # report and go on: the table must come out
                report.check_rows.append(f"{cells} — | — | ERROR {first_line(exc)} |")
                report.notes.append(f"{variant} {objective} decoupled={decoupled}: {traceback.format_exc(limit=3)!r}")
            report.flush()
        del zr, ref
        free()


class Clock:
    """Elapsed seconds between marks: CUDA events on the GPU (read after one synchronise), else perf_counter."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.marks = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def spans(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def measure(variant, n, d, dtype, device, repeats, deadline, compile_backend):
    """dict(fwd, bwd, fwd+bwd medians in seconds, reps, extra bytes) or dict(error) / dict(skipped)."""
    backend, sched, compiled = VARIANTS[variant]
    why = unavailable(clnscl_method(backend, "nscl"), device)
    if why:
        return {"skipped": f"unavailable: {why}"}
    if time.time() > deadline:
        return {"skipped": "out of time budget"}
    free()  # what an earlier failed call may have left
    z = labels = loss = None
    try:
        z, labels = make_inputs(n, d, dtype, device)

        def run(x, y=labels):
            return clnscl.contrastive_loss(x, y, objective="nscl", temperature=TEMPERATURE, backend=backend)

        fn = torch.compile(run, backend=compile_backend) if compiled else run
        with schedule(sched):
            t0 = time.perf_counter()
            fn(z).backward()  # warm-up: JIT compilation, the ops' first load
            if device == "cuda":
                torch.cuda.synchronize()
            warm = time.perf_counter() - t0
            extra = None
            if device == "cuda":
                z.grad = None
                free()
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                fn(z).backward()
                torch.cuda.synchronize()
                warm = min(warm, time.perf_counter() - t0)
                extra = torch.cuda.max_memory_allocated() - base
            reps = max(1, min(repeats, int((deadline - time.time()) / max(warm, 1e-3) / 2)))
            fwd, bwd = [], []
            for _ in range(reps):
                z.grad = None
                clock = Clock(device)
                clock.mark()
                loss = fn(z)
                clock.mark()
                loss.backward()
                clock.mark()
                f, b = clock.spans()
                fwd.append(f)
                bwd.append(b)
        both = [f + b for f, b in zip(fwd, bwd)]
        return {"fwd": median(fwd), "bwd": median(bwd), "fwd+bwd": median(both), "reps": reps, "extra": extra}
    except torch.cuda.OutOfMemoryError as exc:
        return {"error": f"out of GPU memory ({first_line(exc)[:100]})", "oom": True}
    except Exception as exc:
        return {"error": f"ERROR {first_line(exc)}"}
    finally:
        del z, labels, loss
        free()


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def speed(report, variants, n, d, dtype, device, repeats, deadline, compile_backend):
    name = str(dtype).removeprefix("torch.")
    res = {v: measure(v, n, d, dtype, device, repeats, deadline, compile_backend) for v in variants}
    ref, comp = res.get("reference", {}), res.get("reference, torch.compile", {})
    for variant, r in res.items():
        if "fwd" not in r:
            report.speed_rows.append(f"| {name} | {variant} | {n} | — | — | — | — | — | — | — | "
                                     f"{r.get('skipped') or r.get('error')} |")
            continue
        for part in PARTS:
            t = r[part]
            counted = COUNTED[part] * float(n) * n * d / t / 1e12
            done = work(variant, part, n, d, dtype, device) / t / 1e12
            vs = f"{ref[part] / t:.1f}×" if part in ref else "—"
            vs_comp = f"{comp[part] / t:.1f}×" if part in comp else "—"
            mem, note = "", ""
            if part == "fwd+bwd":
                mem = fmt_bytes(r["extra"]) if r["extra"] is not None else "n/a (CPU)"
                note = f"median of {r['reps']}"
                if r["extra"] is not None:
                    note += f"; {r['extra'] / (n * d * dtype.itemsize):.1f}× N·d·{dtype.itemsize}B"
            report.speed_rows.append(f"| {name} | {variant} | {n} | {part} | {fmt_time(t)} | {counted:.3g} | "
                                     f"{done:.3g} | {vs} | {vs_comp} | {mem} | {note} |")
    report.flush()
    return res


def bars(report, res, n, d, dtype, dry_run):
    """The GPU bars of docs/design.md §7 on one dtype's results (a dry run's figures are no measurement)."""
    def tflops(variant):
        r = res.get(variant, {})
        return 8.0 * n * n * d / r["fwd+bwd"] / 1e12 if "fwd+bwd" in r else None

    fastest = min((v for v in ("triton symmetric", "triton general") if "fwd+bwd" in res.get(v, {})),
                  key=lambda v: res[v]["fwd+bwd"], default=None)
    ref = res.get("reference", {})
    rows = [("triton general ≥ 300 TFLOP/s counted", tflops("triton general"), 300),
            ("triton symmetric ≥ 600 TFLOP/s counted", tflops("triton symmetric"), 600)]
    speedup = ref["fwd+bwd"] / res[fastest]["fwd+bwd"] if fastest and "fwd+bwd" in ref else None
    rows.append(("fastest triton ≥ 5× the reference", speedup, 5))
    for label, value, bar in rows:
        result = "not measured" if value is None else ("ok" if value >= bar else "MISSED")
        shown = "—" if value is None else f"{value:.3g}"
        report.bar_rows.append(f"| {label} | {shown} | {'dry run: not a measurement' if dry_run else result} |")
    for variant in ("triton symmetric", "triton general"):
        extra = res.get(variant, {}).get("extra")
        ratio = None if extra is None else extra / (n * d * dtype.itemsize)
        result = "not measured" if ratio is None else ("ok" if ratio <= MEMORY_BAR else "MISSED")
        report.bar_rows.append(f"| {variant} memory ≤ {MEMORY_BAR}× N·d·{dtype.itemsize}B | "
                               f"{'—' if ratio is None else f'{ratio:.1f}×'} | {result} |")
    report.flush()


CLIP_D = 512


def two_tower(report, variants, n_check, n, d, device, deadline):
    """Section 4: clip_loss of each backend that runs here against the float64 reference, then its time and
    memory."""
    from clnscl.loss.backends import BACKENDS

    gen = torch.Generator().manual_seed(7)
    a0, b0 = torch.randn(n_check, d, generator=gen), torch.randn(n_check, d, generator=gen)
    probe = a0.to(device)
    variants = [v for v in variants if not (BACKENDS[v].unavailable() or BACKENDS[v].unsupported(probe))]
    for scale in (14.0, 60.0):
        ar, br = (t.to(device, torch.float64).detach().clone().requires_grad_() for t in (a0, b0))
        ref = clnscl.clip_loss(ar, br, scale, backend="reference")
        ref.backward()
        for backend in variants:
            cells = f"| scale {scale:g}, fp32 | {backend} | {n_check} |"
            if time.time() > deadline:
                report.clip_rows.append(f"{cells} — | — | skipped: out of time budget |")
                continue
            try:
                at, bt = (t.to(device, torch.float32).detach().clone().requires_grad_() for t in (a0, b0))
                loss = clnscl.clip_loss(at, bt, scale, backend=backend)
                loss.backward()
                lerr = abs(loss.item() - ref.item()) / abs(ref.item())
                gerr = max(((g.grad.double() - r.grad).abs().max() / r.grad.abs().max()).item()
                           for g, r in ((at, ar), (bt, br)))
                ok = lerr <= 1e-4 and gerr <= 1e-3
                report.clip_rows.append(f"{cells} {lerr:.1e} | {gerr:.1e} | {'ok' if ok else 'FAIL'} |")
            except Exception as exc:
                report.clip_rows.append(f"{cells} — | — | ERROR {first_line(exc)} |")
            report.flush()
        del ar, br, ref
        free()
    times = {}
    for backend in ["reference", *variants]:  # the reference first: the others' rows give their ratio to it
        cells = f"| bf16 | {backend} | {n} |"
        if time.time() > deadline:
            report.clip_rows.append(f"{cells} — | — | skipped: out of time budget |")
            continue
        a = b = None
        try:
            a, b = (torch.randn(n, d, device=device, dtype=torch.bfloat16).requires_grad_() for _ in range(2))
            clnscl.clip_loss(a, b, 1 / 0.07, backend=backend).backward()  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            spans = []
            for _ in range(3):
                clock = Clock(device)
                clock.mark()
                clnscl.clip_loss(a, b, 1 / 0.07, backend=backend).backward()
                clock.mark()
                spans += clock.spans()
            times[backend] = median(spans)
            mem = fmt_bytes(torch.cuda.max_memory_allocated() - base) if device == "cuda" else "—"
            ratio = f"{times['reference'] / times[backend]:.2f}× the reference" if "reference" in times else ""
            report.clip_rows.append(f"{cells} {fmt_time(times[backend])} | {mem} | {ratio} |")
        except torch.cuda.OutOfMemoryError as exc:
            report.clip_rows.append(f"{cells} — | — | out of GPU memory ({first_line(exc)[:80]}) |")
        except Exception as exc:
            report.clip_rows.append(f"{cells} — | — | ERROR {first_line(exc)} |")
        finally:
            del a, b
            free()
        report.flush()


def main(argv=None):
    p = argparse.ArgumentParser(description="compact GPU benchmark of the clnscl loss (see the module doc)")
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--check-n", type=int, default=4096)
    p.add_argument("--clip-n", type=int, default=16384, help="pairs of the two-tower loss's speed rows")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--budget", type=float, default=240, help="seconds; what does not fit is reported as skipped")
    p.add_argument("--out", default=None, help="markdown file rewritten after every row")
    p.add_argument("--no-fp32", action="store_true", help="bf16 speed rows only")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (no GPU needed)")
    a = p.parse_args(argv)

    started = time.time()
    deadline = started + a.budget
    if a.dry_run:
        device, n, check_n, compile_backend = "cpu", min(a.n, 64), min(a.check_n, 96), "aot_eager"
        a.clip_n = min(a.clip_n, 64)
        a.repeats = min(a.repeats, 2)
        variants = list(VARIANTS)
    else:
        if not torch.cuda.is_available():
            print("gpu_bench: no CUDA device (use --dry-run to exercise the script on the CPU)", file=sys.stderr)
            return 2
        device, n, check_n, compile_backend = "cuda", a.n, a.check_n, "inductor"
        variants = [v for v in VARIANTS if v != "cpu"]
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
        f"Python {platform.python_version()}; d = {a.d}; temperature {TEMPERATURE}; 100 classes; V = 2; "
        f"torch.compile backend {compile_backend}",
    ]
    report = Report(a.out, header)
    report.flush()

    fused = [v for v in variants if not v.startswith("reference")]
    try:
        correctness(report, fused, check_n, a.d, device, deadline)
    except Exception as exc:
        report.notes.append(f"correctness section failed: {first_line(exc)}")
    dtypes = [torch.bfloat16] + ([] if a.no_fp32 else [torch.float32])
    for dtype in dtypes:
        try:
            res = speed(report, variants, n, a.d, dtype, device, a.repeats, deadline, compile_backend)
            if dtype == torch.bfloat16:
                bars(report, res, n, a.d, dtype, a.dry_run)
            if any(res.get(v, {}).get("oom") for v in ("reference", "reference, torch.compile")):
                half = [v for v in variants if v.startswith(("triton", "reference"))]
                speed(report, half, n // 2, a.d, dtype, device, a.repeats, deadline, compile_backend)
                report.notes.append(f"the reference ran out of GPU memory at N = {n} ({dtype}); N = {n // 2} rows "
                                    "give the speed-up at a size where it fits")
        except Exception as exc:
            report.notes.append(f"speed section {dtype} failed: {first_line(exc)}")
    try:
        two_tower(report, [v for v in ("triton", "cuda", "cpu") if v in {VARIANTS[x][0] for x in fused}], check_n,
                  a.clip_n, 40 if a.dry_run else CLIP_D, device, deadline)
    except Exception as exc:
        report.notes.append(f"two-tower section failed: {first_line(exc)}")
    report.notes.append(f"bars (docs/design.md §7, H200, bf16, N = 65,536): ≥ 300 TFLOP/s counted as 8N²d (general), "
                        f"≥ 600 (symmetric), ≥ 5× the reference, memory O(N·d). Wall time of this script: "
                        f"{time.time() - started:.0f} s (budget {a.budget:.0f} s).")
    report.flush()
    print(report.text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
