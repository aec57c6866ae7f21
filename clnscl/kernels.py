"""`python -m clnscl.kernels`: what the compiler makes of the GPU kernels, on a machine without a GPU.

Every launch the Triton ops can make — fp32 inputs (tf32x3 dots at torch's default matmul precision, tf32
below it), bf16 and fp16 × every feature bucket up to the ops' limit × the general schedule's forward and
three backward variants (one set's rows and columns, a cross problem's rows, its columns), the symmetric
schedule's forward and backward, and the cross op's forward (both sides' sums) and backward (both terms),
each for a row count that is a multiple of 16 and for an odd one (the ops pad features to a multiple of 16
and align every pointer, so these are all the specialisations they launch) — is compiled for the target
(sm_90 = Hopper, sm_80 = Ampere) by triton's own compiler and ptxas, not launched, and read back off the
cubin with the cuobjdump of the triton wheel: registers, stack (spilled registers), shared memory, and the
tensor-core instructions in the SASS (HGMMA: Hopper's wgmma; HMMA: mma.sync). The CUDA C++ kernels of the
built library are read the same way.

    python -m clnscl.kernels [--sm 90 80] [--dtypes ...] [--kernels ...] [--d ...] [--cuda] [--json FILE]
                             [--check] [--from-ptx]

--check exits 1 when a Triton launch spills, needs more shared memory than one block of the target gets, or
on sm_90 does not use wgmma. TRITON_INTERPRET must be unset (the interpreter compiles nothing).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# shared memory one block may use (the opt-in maximum), bytes
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
TENSOR_CORE_OPS = ("HGMMA", "HMMA")
PTX_TENSOR_CORE_OPS = ("wgmma.mma_async", "mma.sync")  # the PTX instructions ptxas makes them of
DTYPES = {"fp32 (tf32x3)": (torch.float32, "highest"), "fp32 (tf32)": (torch.float32, "high"),
          "bf16": (torch.bfloat16, "highest"), "fp16": (torch.float16, "highest")}
# each kernel of the report -> the kind of its tiling in loss/triton/ops.py
BLOCK_KINDS = {"forward": "fwd", "backward": "bwd", "backward rows": "bwd", "backward columns": "bwd",
               "symmetric forward": "sym_fwd", "symmetric backward": "sym_bwd", "cross forward": "cross_fwd",
               "cross backward": "bwd"}
KERNELS = tuple(BLOCK_KINDS)


def cuobjdump() -> str:
    """The cuobjdump of the triton wheel (any CUDA toolkit's otherwise)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(path) if path.exists() else "cuobjdump"


@contextlib.contextmanager
def target(sm: int):
    """Make triton compile for compute capability `sm` (no GPU needed: a driver that names the target)."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    try:
        real = driver.active
    except Exception:  # noqa: BLE001  (no GPU driver on this machine)
        real = None

    class Named:
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", sm, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def __getattr__(self, name):
            if real is None:
                raise AttributeError(name)
            return getattr(real, name)

    driver.set_active(Named())
    _forget_targets()
    try:
        yield
    finally:
        _forget_targets()
        if real is not None:  # without a GPU there is no driver to go back to
            driver.set_active(real)


def _forget_targets() -> None:
    """Drop the compile target each kernel keeps per device (set at its first compile), so that the next
    compile is for the target now active."""
    from .loss.triton import kernels

    for kernel in (kernels.lse_fwd_kernel, kernels.lse_bwd_kernel, kernels.lse_sym_fwd_kernel,
                   kernels.lse_sym_bwd_kernel, kernels.lse_cross_fwd_kernel):
        kernel.device_caches.clear()


def resources(cubin: bytes, tool: str, ptx: str | None = None) -> dict:
    """Registers, stack bytes and tensor-core instructions of one kernel's cubin: read off its SASS, or, when
    its `ptx` is given, off the PTX (wgmma.mma_async, which ptxas can only make HGMMA; mma.sync: HMMA), which
    skips the disassembly (half the time of a report)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        flags = ["--dump-resource-usage"] + (["--dump-sass"] if ptx is None else [])
        text = subprocess.run([tool, *flags, f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    regs, stack = re.search(r"REG:(\d+)", text), re.search(r"STACK:(\d+)", text)
    if ptx is None:
        found = [op for op in TENSOR_CORE_OPS if re.search(rf"\b{op}\b", text)]
    else:
        found = [op for op, ins in zip(TENSOR_CORE_OPS, PTX_TENSOR_CORE_OPS) if ins in ptx]
    return {"registers": int(regs.group(1)) if regs else None, "stack": int(stack.group(1)) if stack else None,
            "tensor_cores": ",".join(found) or "none"}


def _launch(kind: str, dtype: torch.dtype, d: int, n: int, sm: int):
    """(kernel, arguments, constexprs and options) of one launch of the Triton ops, on CPU tensors of n rows."""
    from .loss.triton import ops
    from .loss.triton.kernels import (
        lse_bwd_kernel,
        lse_cross_fwd_kernel,
        lse_fwd_kernel,
        lse_sym_bwd_kernel,
        lse_sym_fwd_kernel,
    )

    rows = torch.empty(n, d, dtype=dtype)
    ids = torch.zeros(n, dtype=torch.int64)
    f32 = torch.empty(n, dtype=torch.float32)
    include = 5  # POS | NEG: the mask's bits are runtime data in the kernels' loops, any value compiles alike
    if kind == "symmetric forward":
        return lse_sym_fwd_kernel, (rows, ids, ids, f32, n, d, 1.0, 1.0), ops.symmetric_meta(
            "fwd", dtype, d, include, sm)
    if kind == "symmetric backward":
        grads = torch.empty(n, d, dtype=torch.float32)
        return lse_sym_bwd_kernel, (rows, grads, ids, ids, f32, n, d, 1.0, 1.0, 1.0), ops.symmetric_meta(
            "bwd", dtype, d, include, sm)
    if kind == "cross forward":
        return lse_cross_fwd_kernel, (rows, rows, ids, ids, ids, ids, f32, f32, n, n, d, n, 1.0, 1.0), \
            ops.forward_meta(dtype, d, include, sm, kind="cross_fwd")
    if kind == "forward":
        return lse_fwd_kernel, (rows, rows, ids, ids, ids, ids, f32, n, n, d, 0, 1.0), ops.forward_meta(
            dtype, d, include, sm)
    terms = {"backward": (True, True), "backward rows": (True, False), "backward columns": (False, True),
             "cross backward": (True, True)}[kind]
    offset = 0 if kind == "backward" else 3  # a cross problem's rows start past the lower ranks' (or the columns)
    args = (rows, rows, rows, ids, ids, ids, ids, f32, f32, f32, f32, n, n, d, offset, 0, 1.0, 1.0)
    return lse_bwd_kernel, args, ops.backward_meta(dtype, d, include, sm, *terms)


def triton_rows(sm: int, buckets=None, dtypes=None, kinds=KERNELS, row_counts=(4096, 4099),
                from_ptx: bool = False) -> list[dict]:
    """One row per launch configuration of the Triton ops, compiled for `sm` (tensor cores read off the
    PTX instead of the SASS with `from_ptx`)."""
    from .loss.triton import ops

    if ops.INTERPRET:
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter compiles no kernel")
    tool, rows = cuobjdump(), []
    buckets = buckets or [1 << k for k in range(4, ops.MAX_D.bit_length())]
    previous = torch.get_float32_matmul_precision()
    with target(sm):
        for label in dtypes or DTYPES:
            dtype, precision = DTYPES[label]
            torch.set_float32_matmul_precision(precision)
            try:
                for d_bucket in buckets:
                    for kind in kinds:
                        if not ops.launched(BLOCK_KINDS[kind], dtype, d_bucket, sm):
                            continue
                        for n in row_counts:
                            kernel, args, meta = _launch(kind, dtype, d_bucket, n, sm)
                            compiled = kernel.warmup(*args, grid=(1,), **meta)
                            blocks = ops.blocks(BLOCK_KINDS[kind], dtype, d_bucket, sm)
                            rows.append({"sm": sm, "dtype": label, "d": d_bucket, "n": n, "kernel": kind,
                                         "blocks": blocks._asdict(),
                                         "shared": compiled.metadata.shared,
                                         **resources(compiled.asm["cubin"], tool,
                                                     compiled.asm["ptx"] if from_ptx else None)})
            finally:
                torch.set_float32_matmul_precision(previous)
    return rows


def problems(row: dict) -> list[str]:
    """What keeps a Triton launch from the static bar: spills, shared memory over the limit, no wgmma (sm_90)."""
    out = []
    if row["stack"] is None or row["stack"] > 0:
        out.append(f"stack {row['stack']} B (spills)")
    if row["shared"] > SHARED_LIMIT.get(row["sm"], 49152):
        out.append(f"shared {row['shared']} B > {SHARED_LIMIT.get(row['sm'], 49152)}")
    if row["sm"] >= 90 and "HGMMA" not in row["tensor_cores"]:
        out.append("no wgmma")
    return out


def cuda_rows() -> list[dict]:
    """One row per kernel and architecture of the built CUDA C++ library (RuntimeError when it is not built)."""
    from . import extension

    extension.load("cuda")
    lib = extension.build_dir("cuda") / "clnscl_cuda.so"
    tool = cuobjdump()
    usage = subprocess.run([tool, "--dump-resource-usage", str(lib)], capture_output=True, text=True).stdout
    sass = subprocess.run([tool, "--dump-sass", str(lib)], capture_output=True, text=True).stdout
    tensor_cores: dict[tuple[str, str], set] = {}
    arch = function = ""
    for line in sass.splitlines():
        if m := re.match(r"\s*arch = (sm_\d+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function : (\S+)", line):
            function = m.group(1)
        else:
            for op in TENSOR_CORE_OPS:
                if re.search(rf"\b{op}\b", line):
                    tensor_cores.setdefault((arch, function), set()).add(op)
    rows, arch = [], ""
    lines = usage.splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"\s*arch = (sm_\d+)", line):
            arch = m.group(1)
        elif (m := re.match(r"\s*Function (\S+):", line)) and i + 1 < len(lines):
            stats = dict(re.findall(r"(REG|STACK|SHARED):(\d+)", lines[i + 1]))
            found = tensor_cores.get((arch, m.group(1)), set())
            rows.append({"arch": arch, "kernel": _demangle(m.group(1)), "registers": int(stats["REG"]),
                         "stack": int(stats["STACK"]), "shared": int(stats["SHARED"]),
                         "tensor_cores": ",".join(sorted(found)) or "none"})
    return rows


def _demangle(name: str) -> str:
    try:
        out = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip()
    except OSError:
        return name
    out = re.sub(r"clnscl::\(anonymous namespace\)::", "", out)
    return out.split("(", 1)[0] if out else name  # the template arguments say which instance; not the parameters


def _blocks_text(b: dict) -> str:
    text = f"{b['m']}×{b['n']}×{b['d']}"
    if b["num_d"] > 1:
        text += f" (×{b['num_d']} chunks)"
    return text + f", o {b['o']}, {b['warps']} warps, {b['stages']} stages"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clnscl.kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--sm", type=int, nargs="+", default=[90, 80], help="compute capabilities (default 90 80)")
    ap.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES), metavar="DTYPE",
                    help=f"input dtypes (default all: {', '.join(DTYPES)})")
    ap.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS), metavar="KERNEL",
                    help=f"which kernels (default all: {', '.join(KERNELS)})")
    ap.add_argument("--d", type=int, nargs="+", metavar="BUCKET", help="feature buckets (default all: 16 … 1024)")
    ap.add_argument("--cuda", action="store_true", help="also the CUDA C++ kernels of the built library")
    ap.add_argument("--json", metavar="FILE", help="write every row to FILE")
    ap.add_argument("--check", action="store_true", help="exit 1 when a Triton launch misses the static bar")
    ap.add_argument("--from-ptx", action="store_true", help="read the tensor-core instructions off the PTX "
                    "(wgmma.mma_async: HGMMA, mma.sync: HMMA) instead of disassembling the SASS (faster)")
    a = ap.parse_args(argv)
    import triton

    print(f"triton {triton.__version__}, torch {torch.__version__}")
    every, bad = {"triton": [], "cuda": []}, 0
    for sm in a.sm:
        print("\n| sm | dtype | d | rows | kernel | blocks | registers | stack | shared | tensor cores | |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
        for row in triton_rows(sm, buckets=a.d, dtypes=a.dtypes, kinds=a.kernels, from_ptx=a.from_ptx):
            issues = problems(row)
            bad += bool(issues)
            every["triton"].append({**row, "problems": issues})
            print(f"| {sm} | {row['dtype']} | {row['d']} | {row['n']} | {row['kernel']} | "
                  f"{_blocks_text(row['blocks'])} | "
                  f"{row['registers']} | {row['stack']} | {row['shared']} | {row['tensor_cores']} | "
                  f"{'; '.join(issues) or 'ok'} |", flush=True)
    if a.cuda:
        print("\n| arch | CUDA C++ kernel | registers | stack | shared | tensor cores |\n"
              "| --- | --- | --- | --- | --- | --- |")
        for row in cuda_rows():
            every["cuda"].append(row)
            print(f"| {row['arch']} | {row['kernel']} | {row['registers']} | {row['stack']} | {row['shared']} | "
                  f"{row['tensor_cores']} |")
    print(f"\n{len(every['triton'])} Triton launches compiled; {bad} miss the static bar (spills, shared memory "
          f"over the limit, or no wgmma on sm_90)")
    if a.json:
        Path(a.json).write_text(json.dumps(every, indent=1))
    return 1 if a.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
