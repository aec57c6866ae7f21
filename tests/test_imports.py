"""The package's import graph has no cycles: every import statement of every module, those inside functions
(lazy imports) included, read from the source (AST), relative imports resolved. A parent package is not an
edge of its submodules (Python imports it first anyway); `from package import name` is an edge to the
submodule `package.name` when there is one, else to the package."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.support.processes import REPO


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of the package whose folder is `root`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its source)."""
    names = modules(root, package)
    graph = {}
    for name, path in names.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in names and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph(REPO / "clnscl", "clnscl")
    assert len(graph) > 40 and "clnscl.loss.functional" in graph["clnscl.loss"]  # the walk sees the package
    assert "clnscl.extension" in graph["clnscl.metrics.pairwise"]  # relative imports resolve
    assert cycles(graph) == []


def test_a_lazy_cycle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]



def test_the_public_names_are_where_users_find_them():
    import torch

    import clnscl
    import clnscl.metrics
    from clnscl.loss.ops import load_cpp
    from clnscl.train.global_bn import GlobalBatchNorm

    for name in ("contrastive_loss", "NTXentLoss", "DCLLoss", "NSCLLoss", "SupConLoss", "__version__"):
        assert name in clnscl.__all__ and getattr(clnscl, name) is not None
    assert clnscl.contrastive_loss is clnscl.loss.contrastive_loss and clnscl.NSCLLoss is clnscl.loss.NSCLLoss
    for name in clnscl.metrics.__all__:
        assert callable(getattr(clnscl.metrics, name)), name
    assert issubclass(GlobalBatchNorm, torch.nn.modules.batchnorm._BatchNorm)
    load_cpp("cpu")
    for op in ("masked_lse", "masked_lse_backward", "pairwise_moments", "pairwise_histograms"):
        assert hasattr(torch.ops.clnscl, op), op


def test_the_trainer_library_imports_none_of_the_command_lines_batteries():
    """`clnscl.train` (Coupled, fit) knows only modules, optimisers and batches: importing it, in a fresh
    interpreter, loads no dataset, split, augmentation, sampler, pipeline, model builder or configuration."""
    import subprocess
    import sys

    code = "import sys, clnscl.train; print(' '.join(m for m in sys.modules if m.startswith('clnscl.train')))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=str(REPO)).stdout.split())
    batteries = {f"clnscl.train.{m}" for m in ("datasets", "splits", "augment", "image_ops", "samplers", "pipeline",
                                               "models", "optim", "config", "batches", "loop", "run")}
    assert "clnscl.train.fit" in loaded and not loaded & batteries, sorted(loaded & batteries)


def test_import_and_first_use_are_quiet_and_reach_every_part():
    """A fresh interpreter: `import clnscl` reaches metrics, train, theory and compat (imported on first access),
    and importing, a loss and a metric print nothing on stderr (no torch build warning, no compile notice)."""
    import subprocess
    import sys

    code = ("import sys, torch, clnscl\n"
            "assert 'clnscl.metrics' not in sys.modules and 'clnscl.train' not in sys.modules\n"
            "z = torch.randn(6, 2, 5)\n"
            "clnscl.contrastive_loss(z, objective='cl', backend='cpu').item()\n"
            "clnscl.metrics.cka(z[:, 0], z[:, 1], 'rbf', backend='cpu')\n"
            "assert clnscl.theory and clnscl.compat and clnscl.train.Coupled\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == "", done.stderr[-2000:]
