"""Compile-on-first-use of the C++ (and, where nvcc and a CUDA torch exist, CUDA) ops, cached on disk.

The ops are built with ninja against the torch that is imported (never pip's isolated build torch), once per
torch version, Python, CPU, source folder and ninja binary (ninja rebuilds when a source changes), under
~/.cache/clnscl (override with CLNSCL_BUILD_DIR). A line on stderr says when a compile starts. Failures are
kept with their reason for `python -m clnscl.info`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

_PKG = Path(__file__).resolve().parent
_log = logging.getLogger("clnscl")
_loaded: dict[str, object] = {}
_errors: dict[str, str] = {}


def source_dir() -> Path:
    """The C++/CUDA sources, clnscl/csrc/ (package data of every install)."""
    src = _PKG / "csrc"
    if not src.is_dir():
        raise FileNotFoundError(f"clnscl C++ sources not found at {src}")
    return src


def _cpu_tag() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        flags = platform.processor()
    return hashlib.sha1((platform.machine() + flags).encode()).hexdigest()[:8]


def build_dir(kind: str) -> Path:
    root = Path(os.environ.get("CLNSCL_BUILD_DIR", Path.home() / ".cache" / "clnscl"))
    tv = torch.__version__.replace("+", "_")
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    # two checkouts, or two ninja binaries (whose logs differ), must not keep rebuilding each other's build
    src = hashlib.sha1(f"{source_dir()}|{shutil.which('ninja')}".encode()).hexdigest()[:8]
    d = root / f"torch{tv}-{py}-{_cpu_tag()}-src{src}" / kind
    d.mkdir(parents=True, exist_ok=True)
    return d


def _cpp_extension():
    """torch.utils.cpp_extension, imported without the warning it logs where nvcc exists but no GPU does ("No
    CUDA runtime is found"): the CPU ops need no CUDA runtime, and the CUDA ops state their own reasons."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def cuda_toolkit_reason() -> str | None:
    """Why the CUDA ops cannot be compiled here, or None if they can."""
    CUDA_HOME = _cpp_extension().CUDA_HOME  # noqa: N806 (torch's name)

    if torch.version.cuda is None:
        return "torch is a CPU-only build"
    if CUDA_HOME is None:
        return "no CUDA toolkit (nvcc) found; set CUDA_HOME"
    return None


def _cuda_include_paths() -> list[str]:
    """CUDA headers that pip-installed torch needs live in site-packages/nvidia/*/include."""
    paths = []
    for entry in sys.path:
        nv = Path(entry) / "nvidia"
        if nv.is_dir():
            paths += [str(p) for p in sorted(nv.glob("*/include")) if p.is_dir()]
    return paths


def _cuda_library_flags() -> list[str]:
    """-L for the folder holding libcudart.so: torch's CUDA_HOME guess (from nvcc's path) may lack it."""
    CUDA_HOME = _cpp_extension().CUDA_HOME  # noqa: N806 (torch's name)

    roots = [r for r in (os.environ.get("CUDA_HOME"), CUDA_HOME, "/usr/local/cuda") if r]
    for root in roots:
        for sub in ("lib64", "lib"):
            if (Path(root) / sub / "libcudart.so").exists():
                return [f"-L{Path(root) / sub}"]
    return []


def _build(kind: str):
    cpp_extension = _cpp_extension()
    src = source_dir()
    # -fno-trapping-math, -fno-math-errno: no program here reads floating-point exception flags or errno, and
    # without them GCC may not turn the selects of the element loops (the mask, exp's clamps) into blends on AVX2,
    # nor vectorise sqrt, leaving the loops scalar
    cflags = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    if platform.machine() in ("x86_64", "AMD64"):
        cflags.append("-march=native")
    kwargs = dict(extra_cflags=cflags, extra_ldflags=["-fopenmp"], is_python_module=False)
    if kind == "cpu":
        sources = [src / "schemas.cpp", *sorted((src / "cpu").glob("*.cpp"))]
    else:
        why = cuda_toolkit_reason()
        if why:
            raise RuntimeError(why)
        sources = sorted((src / "cuda").glob("*.cu"))
        kwargs["extra_cuda_cflags"] = ["-O3", "--use_fast_math"]
        kwargs["extra_include_paths"] = _cuda_include_paths()
        kwargs["extra_ldflags"] = kwargs["extra_ldflags"] + _cuda_library_flags()
        if not torch.cuda.is_available():  # compile-only machine (CI): name the targets instead of probing a GPU
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    out = build_dir(kind)
    name = f"clnscl_{kind}"
    if not (out / f"{name}.so").exists():  # quiet by default: logging.getLogger("clnscl") at INFO shows it
        _log.info("clnscl: compiling the %s ops into %s (first use only, about a minute)", kind.upper(), out)
    cpp_extension.load(name=name, sources=[str(s) for s in sources], build_directory=str(out), **kwargs)
    return name


def _summary(exc: Exception) -> str:
    """One line for a build failure: the first compiler error if there is one, else the message's last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines)[0 if errors else -1][:300]


def load(kind: str = "cpu"):
    """Build (first time) and load the ops of `kind` ("cpu" or "cuda"); raise RuntimeError with the reason."""
    if kind in _loaded:
        return _loaded[kind]
    if kind in _errors:
        raise RuntimeError(_errors[kind])
    if os.environ.get("CLNSCL_DISABLE_EXT"):
        _errors[kind] = "disabled by CLNSCL_DISABLE_EXT"
        raise RuntimeError(_errors[kind])
    try:
        if kind == "cuda":
            load("cpu")  # the CUDA kernels implement the schemas that the CPU library defines
        _loaded[kind] = _build(kind)
    except Exception as exc:  # keep the reason for info/backends; the caller decides whether it is fatal
        _errors[kind] = _summary(exc)
        raise RuntimeError(_errors[kind]) from exc
    return _loaded[kind]


def reason(kind: str) -> str | None:
    """None if the ops of `kind` load, else why not."""
    try:
        load(kind)
        return None
    except RuntimeError as exc:
        return str(exc)
