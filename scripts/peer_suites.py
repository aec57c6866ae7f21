"""The peers' own unit tests on clnscl's shims: lightly's NTXentLoss / DCLLoss tests on `clnscl.compat.lightly`
and pytorch-metric-learning's NTXentLoss / SelfSupervisedLoss tests on `clnscl.compat.pml`, with only the imports
of the classes under test swapped, side by side with the same tests on the installed peer itself.

    python scripts/peer_suites.py --lightly PATH/TO/lightly --pml PATH/TO/pytorch-metric-learning [--stand-in]

Each PATH is a git checkout (a work tree: its tests/ is read) or a bare or mirror git directory (read with
`git --git-dir PATH show HEAD:...`); either option may be left out. The peers' files are read at run time and
copied only into a temporary directory (removed at the end unless --keep), never into this repository: the test
files, the helper modules they import from their own tests package (followed through their relative imports) and
the packages' __init__.py files; the peers' conftest.py files are not copied. In the shim copy the imports of the
shimmed names are rewritten — `from lightly.loss import NTXentLoss` to `from clnscl.compat.lightly import
NTXentLoss`, `from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss` to the shim's NTXentLoss
and pml's own SelfSupervisedLoss, `import pytorch_metric_learning.losses as losses` to a copy of that module whose
NTXentLoss and SupConLoss are the shims' — and everything else (the peers' utilities, distances, reducers,
wrappers) stays the peer's. Each copy runs under pytest in a subprocess of its own (`-p no:cacheprovider -q -rA`,
OMP_NUM_THREADS=1 unless set), a small plugin recording each test's outcome and, for a failure, its exception and
the file that raised it.

Each test of the shim run is then: "pass"; "refused (documented)" when it failed on a ValueError or TypeError
raised inside clnscl whose message is one of the shims' documented refusals (REFUSALS_* below, each with its
reason); "fails on the peer too" when it failed otherwise and fails on the installed peer as well (the tests
read may be newer or older than the installed peer); else "FAIL", listed with its message. A peer test that
builds a refused loss next to supported ones (pml's builds each loss with and without distance=) is refused
whole; --stand-in adds a run where the peer's class is built instead wherever the shim refuses arguments that
the peer accepts, so that the rest of such a test still checks the shim (its FAILs count too).

pml's tests run on TEST_DEVICE (cuda when available, else cpu; --device sets it) with their TEST_DTYPES (float16,
float32, float64 unless set). lightly's tests use pytest-mock's `mocker` (in the test extra).

Exit status: 1 if any test is a FAIL (or a pytest run broke down), else 0.
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Refusal:
    """A refusal the shim documents: the exception types, a pattern of its message, why, and whether the peer
    accepts what the shim refuses (then, with --stand-in, the peer's class may stand in for the shim's)."""

    types: tuple[str, ...]
    pattern: str
    reason: str
    peer_accepts: bool = True


@dataclass(frozen=True)
class Suite:
    """A peer's tests: the files, the peer modules whose shimmed names are swapped, the refusals."""

    name: str
    distribution: str  # the installed peer, for its version
    files: tuple[str, ...]
    shim: str  # the shim module
    names: frozenset[str]  # the names the shim module provides
    modules: tuple[str, ...]  # the peer modules these names are imported from
    refusals: tuple[Refusal, ...]
    peer_module: str  # the peer module with the shimmed classes (the stand-ins' peer side)


REFUSALS_LIGHTLY = (
    Refusal(("ValueError",), r"^temperature must be finite and > 0",
            "a temperature <= 0: clnscl takes tau > 0 (lightly refuses only |tau| < 1e-8, so a negative tau runs "
            "there and flips the softmax)"),
    Refusal(("ValueError",), r"^memory_bank_size must be 0 or \(num_features, dim\)",
            "an integer memory_bank_size: lightly 1.6 takes only (M, dim) and refuses a bare M > 0 itself", False),
    Refusal(("ValueError",), r"^sigma must be finite and > 0", "DCLWLoss's sigma <= 0"),
    Refusal(("TypeError",), r"^(temperature|sigma|memory_bank_size\[[01]\]) must be (a real number|an integer)",
            "a temperature, sigma or bank size of the wrong type", False),
    Refusal(("ValueError",), r"^gather_distributed is True but torch\.distributed is not available",
            "gather_distributed without torch.distributed (as lightly)", False),
)
REFUSALS_PML = (
    Refusal(("ValueError",), r"pml's distance, reducer, regularizer and collect_stats arguments are not honoured",
            "pml's distance=, reducer=, embedding regularizer or collect_stats: the shim's similarity is cosine, "
            "its reduction pml's default"),
    Refusal(("ValueError",), r"^indices_tuple: a miner's \(or CrossBatchMemory's\) pairs are not honoured",
            "indices_tuple (a miner's pairs, CrossBatchMemory's): the fused op takes every pair"),
    Refusal(("ValueError",), r"^labels: this shim needs labels",
            "no labels (pml's indices_tuple alone): the shim needs labels"),
    Refusal(("ValueError",), r"^temperature must be finite and > 0", "a temperature <= 0"),
    Refusal(("TypeError",), r"^temperature must be a real number", "a temperature that is not a real number", False),
)

SUITES = (
    Suite("lightly", "lightly", ("tests/loss/test_ntx_ent_loss.py", "tests/loss/test_dcl_loss.py"),
          "clnscl.compat.lightly", frozenset({"NTXentLoss", "DCLLoss", "DCLWLoss", "negative_mises_fisher_weights"}),
          ("lightly.loss", "lightly.loss.ntx_ent_loss", "lightly.loss.dcl_loss"), REFUSALS_LIGHTLY, "lightly.loss"),
    Suite("pml", "pytorch-metric-learning",
          ("tests/losses/test_ntxent_loss.py", "tests/losses/test_self_supervised_loss.py"),
          "clnscl.compat.pml", frozenset({"NTXentLoss", "SupConLoss"}),
          ("pytorch_metric_learning.losses", "pytorch_metric_learning.losses.ntxent_loss",
           "pytorch_metric_learning.losses.supcon_loss"), REFUSALS_PML, "pytorch_metric_learning.losses"),
)

PLUGIN = "_peer_suites_plugin"
PLUGIN_SOURCE = '''\
"""Written by clnscl's scripts/peer_suites.py: each test's outcome, and a failure's exception, as JSON lines."""
import json
import os

import pytest

OUT = os.environ["PEER_SUITES_OUT"]
STOOD_IN = []  # the constructions of this test where the peer's class stood in for a refusing shim


def _write(record):
    with open(OUT, "a") as f:
        f.write(json.dumps(record) + "\\n")


def _exception(excinfo):
    tb = excinfo.tb
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    exc = excinfo.value
    return {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc),
            "raised_in": tb.tb_frame.f_code.co_filename if tb is not None else ""}


def pytest_runtest_logstart(nodeid, location):
    STOOD_IN.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    record = {"nodeid": item.nodeid, "when": report.when, "outcome": report.outcome, "stood_in": list(STOOD_IN)}
    if report.failed:
        if call.excinfo is not None:
            record.update(_exception(call.excinfo))
        else:
            record.update(type="Failed", module="", message=str(report.longrepr), raised_in="")
    _write(record)


def pytest_collectreport(report):
    if report.failed:
        _write({"nodeid": report.nodeid, "when": "collect", "outcome": "failed", "type": "CollectionError",
                "module": "", "message": str(report.longrepr), "raised_in": ""})
'''

class Peer:
    """A peer's files: from a work tree when DIR/tests exists, else from a (bare or mirror) git directory's HEAD."""

    def __init__(self, directory: str):
        self.dir = Path(directory)
        self.work_tree = (self.dir / "tests").is_dir()
        if not self.work_tree and self._git("rev-parse", "--git-dir").returncode != 0:
            sys.exit(f"{directory}: neither a work tree with tests/ nor a git directory")

    def _git(self, *args: str) -> subprocess.CompletedProcess:
        base = ["git", "-C", str(self.dir)] if self.work_tree else ["git", "--git-dir", str(self.dir)]
        return subprocess.run(base + list(args), capture_output=True)

    def commit(self) -> str:
        done = self._git("rev-parse", "HEAD")
        return done.stdout.decode().strip() if done.returncode == 0 else "(not a git checkout)"

    def exists(self, path: str) -> bool:
        if self.work_tree:
            return (self.dir / path).is_file()
        return self._git("cat-file", "-e", f"HEAD:{path}").returncode == 0

    def read(self, path: str) -> str:
        if self.work_tree:
            return (self.dir / path).read_text()
        done = self._git("show", f"HEAD:{path}")
        if done.returncode != 0:
            raise SystemExit(f"{self.dir}: cannot read HEAD:{path}: {done.stderr.decode().strip()}")
        return done.stdout.decode()


def local_imports(path: str, source: str, peer: Peer) -> list[str]:
    """The files of the peer's tests package that `path` imports (relatively, or as tests.…)."""
    package = PurePosixPath(path).parent
    found = []
    for node in ast.walk(ast.parse(source, path)):
        candidates = []
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "tests"):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.parent
            if not node.level:
                base = PurePosixPath(".")
            module = base.joinpath(*node.module.split(".")) if node.module else base
            candidates = [module] + [module / a.name for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Import):
            candidates = [PurePosixPath(*a.name.split(".")) for a in node.names if a.name.split(".")[0] == "tests"]
        for candidate in candidates:
            for file in (f"{candidate}.py", f"{candidate}/__init__.py"):
                if file not in found and peer.exists(file):
                    found.append(file)
    return found


def gather(peer: Peer, files: tuple[str, ...]) -> dict[str, str]:
    """The test files, the helpers they import from the peer's tests package and the packages' __init__.py."""
    sources: dict[str, str] = {}
    todo = list(files)
    while todo:
        path = todo.pop()
        if path in sources:
            continue
        sources[path] = peer.read(path)
        todo += local_imports(path, sources[path], peer)
        for parent in PurePosixPath(path).parents:
            if parent != PurePosixPath(".") and peer.exists(f"{parent}/__init__.py"):
                todo.append(f"{parent}/__init__.py")
    return sources


def proxy_name(module: str) -> str:
    return "_peer_suites_swap_" + module.replace(".", "_")


def proxy_source(module: str, suite: Suite, target: str) -> str:
    """A module that is the peer's `module` but for the names the shim provides, taken from target."""
    names = ", ".join(sorted(suite.names & names_of(suite.shim)))
    return (f'"""{module} with {target}\'s {names} (written by clnscl\'s scripts/peer_suites.py)."""\n'
            f"import {module} as _peer\n\n"
            "globals().update({k: v for k, v in vars(_peer).items() if not k.startswith('__')})\n"
            f"from {target} import {names}  # noqa: E402,F401\n")


STAND_IN = "_peer_suites_stand_in"


def stand_in_source(suite: Suite) -> str:
    """The shim's names, but where the shim's class refuses a construction with a documented refusal of what the
    peer accepts, the peer's class is constructed instead (and the plugin told)."""
    refusals = [(r.types, r.pattern) for r in suite.refusals if r.peer_accepts]
    lines = [f'"""{suite.shim}\'s names, but where a class refuses its arguments with a documented refusal, '
             f'{suite.peer_module}\'s\nclass stands in (written by clnscl\'s scripts/peer_suites.py)."""',
             "import re", "", "import _peer_suites_plugin", f"import {suite.peer_module} as _peer",
             f"import {suite.shim} as _shim", "", f"REFUSALS = {refusals!r}", "", "",
             "def _stand_in(name):",
             "    shim, peer = getattr(_shim, name), getattr(_peer, name)", "",
             "    def make(*args, **kwargs):",
             "        try:",
             "            return shim(*args, **kwargs)",
             "        except (ValueError, TypeError) as e:",
             "            if not any(type(e).__name__ in t and re.search(p, str(e)) for t, p in REFUSALS):",
             "                raise",
             "            _peer_suites_plugin.STOOD_IN.append(f'{name}: {type(e).__name__}: {e}')",
             "            return peer(*args, **kwargs)", "",
             "    make.__name__ = make.__qualname__ = name",
             "    return make", "", ""]
    classes = names_of(suite.shim, classes_only=True)
    for name in sorted(suite.names & names_of(suite.shim)):
        if name in classes:
            lines.append(f"{name} = _stand_in({name!r})")
        else:
            lines.append(f"from {suite.shim} import {name}  # noqa: E402,F401")
    return "\n".join(lines) + "\n"


def names_of(module: str, classes_only: bool = False) -> set[str]:
    """The public classes and functions a shim module defines (read from its source, without importing it)."""
    kinds = ast.ClassDef if classes_only else (ast.ClassDef, ast.FunctionDef)
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    return {n.name for n in tree.body if isinstance(n, kinds) and not n.name.startswith("_")}


def _names(aliases: list[ast.alias]) -> str:
    return ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in aliases)


def swap_imports(source: str, suite: Suite, target: str) -> tuple[str, list[str], list[str]]:
    """The source with the shimmed names' imports rewritten to target's (the shim or the stand-ins); what was
    swapped; imports that could not be."""
    swapped, unswappable, edits = [], [], []
    provided = suite.names & names_of(suite.shim)
    for node in ast.walk(ast.parse(source)):
        statements = []
        if isinstance(node, ast.ImportFrom) and not node.level and node.module in suite.modules:
            keep = [a for a in node.names if a.name not in provided]
            take = [a for a in node.names if a.name in provided]
            if any(a.name == "*" for a in node.names):
                take = [ast.alias(n) for n in sorted(provided)]
            if not take:
                continue
            if keep:
                statements.append(f"from {node.module} import {_names(keep)}")
            statements.append(f"from {target} import {_names(take)}")
            swapped += [f"{node.module}.{a.name}" for a in take]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            take = [a for a in node.names if f"{node.module}.{a.name}" in suite.modules]
            if not take:
                continue
            keep = [a for a in node.names if a not in take]
            if keep:
                statements.append(f"from {node.module} import {_names(keep)}")
            for a in take:
                statements.append(f"import {proxy_name(node.module + '.' + a.name)} as {a.asname or a.name}")
                swapped.append(f"{node.module}.{a.name} (the module)")
        elif isinstance(node, ast.Import):
            if not any(a.name in suite.modules for a in node.names):
                continue
            for a in node.names:
                if a.name in suite.modules and a.asname:
                    statements.append(f"import {proxy_name(a.name)} as {a.asname}")
                    swapped.append(f"{a.name} (the module)")
                else:
                    if a.name in suite.modules:
                        unswappable.append(f"line {node.lineno}: import {a.name}")
                    statements.append(f"import {_names([a])}")
        else:
            continue
        edits.append((node, "; ".join(statements)))
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    for node, text in sorted(edits, key=lambda e: (e[0].lineno, e[0].col_offset), reverse=True):
        begin = starts[node.lineno - 1] + len(lines[node.lineno - 1].encode()[: node.col_offset].decode())
        end_line = lines[node.end_lineno - 1]
        end = starts[node.end_lineno - 1] + len(end_line.encode()[: node.end_col_offset].decode())
        rest = end_line.encode()[node.end_col_offset:].decode()
        if not rest.strip() or rest.strip().startswith("#"):  # keep the line numbers of what follows
            text += "\n" * (node.end_lineno - node.lineno)
        source = source[:begin] + text + source[end:]
    return source, swapped, unswappable


@dataclass
class Outcome:
    outcome: str  # passed, failed, skipped
    type: str = ""
    module: str = ""
    message: str = ""
    raised_in: str = ""
    stood_in: list = field(default_factory=list)


def read_outcomes(path: Path) -> dict[str, Outcome]:
    """Each test's outcome from the plugin's records: a failing phase wins, then a skip, else a pass."""
    outcomes: dict[str, Outcome] = {}
    if not path.exists():
        return outcomes
    for line in path.read_text().splitlines():
        r = json.loads(line)
        now = outcomes.get(r["nodeid"])
        stood_in = r.get("stood_in", [])
        if now is not None and now.outcome == "failed":
            continue
        if r["outcome"] == "failed":
            outcomes[r["nodeid"]] = Outcome("failed", r["type"], r["module"], r["message"], r["raised_in"], stood_in)
        elif r["outcome"] == "skipped":
            outcomes[r["nodeid"]] = Outcome("skipped")
        elif now is None or stood_in:
            outcomes[r["nodeid"]] = Outcome("passed", stood_in=stood_in or (now.stood_in if now else []))
    return outcomes


def run_pytest(root: Path, plugins: list[Path], files: tuple[str, ...], env: dict, timeout: float,
               log: Path) -> tuple[dict[str, Outcome], str | None]:
    """Run pytest on the copy at root; the outcomes and, when pytest broke down, why."""
    out = root / "outcomes.jsonl"
    (root / "pytest.ini").write_text("[pytest]\n")
    run_env = dict(os.environ, **env, PEER_SUITES_OUT=str(out), PYTHONDONTWRITEBYTECODE="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [*map(str, plugins), os.environ.get("PYTHONPATH")])))
    run_env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "pytest", *files, "-c", "pytest.ini", "--rootdir", ".", "-p", "no:cacheprovider",
               "-q", "-rA", "--continue-on-collection-errors", "-p", PLUGIN]
    try:
        done = subprocess.run(command, cwd=root, env=run_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        log.write_text(str(e.stdout or "") + str(e.stderr or ""))
        return read_outcomes(out), f"pytest ran past {timeout:g} s"
    log.write_text(done.stdout + done.stderr)
    outcomes = read_outcomes(out)
    if done.returncode not in (0, 1) or not outcomes:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        return outcomes, f"pytest exited with {done.returncode}:\n{textwrap.indent(tail, '      ')}"
    return outcomes, None


def refusal(result: Outcome, suite: Suite, clnscl_dir: str) -> Refusal | None:
    """The documented refusal this failure is, if it is one: a ValueError/TypeError raised in clnscl."""
    if result.module != "builtins" or not result.raised_in.startswith(clnscl_dir):
        return None
    for r in suite.refusals:
        if result.type in r.types and re.search(r.pattern, result.message):
            return r
    return None


def first_line(result: Outcome, width: int = 300) -> str:
    text = " ".join(result.message.strip().splitlines()[:3]) if result.message.strip() else "(no message)"
    text = f"{result.type}: {text}"
    return text if len(text) <= width else text[: width - 1] + "…"


def peer_failed(nodeid: str, peer: dict[str, Outcome]) -> Outcome | None:
    """The peer's failure of this test (or of its file's collection), if it failed there."""
    for key in (nodeid, nodeid.split("::")[0]):
        if key in peer and peer[key].outcome == "failed":
            return peer[key]
    return None


@dataclass
class Tally:
    run: int = 0
    peer_pass: int = 0
    passed: int = 0
    stood_in: int = 0
    refused: int = 0
    peer_too: int = 0
    fail: int = 0
    skipped: int = 0


@dataclass
class Findings:
    """What the runs found, over the suites: the refusals met, the peer's failures, the FAILs."""

    refused: dict = field(default_factory=dict)  # (run, suite, reason) -> [tests, of them failing on the peer]
    peer_too: dict = field(default_factory=dict)  # (run, suite, the peer's message) -> [tests, an example]
    stood_in: dict = field(default_factory=dict)  # (suite, the refusal) -> constructions
    fails: list = field(default_factory=list)  # (run, suite, test, message)


def classify(run: str, suite: Suite, shim: dict[str, Outcome], peer: dict[str, Outcome], clnscl_dir: str,
             found: Findings) -> Tally:
    """The run's tests, each a pass, a documented refusal, a failure on the peer too, or a FAIL."""
    tally = Tally()
    for nodeid, result in shim.items():
        if result.outcome == "skipped":
            tally.skipped += 1
            continue
        tally.run += 1
        peer_result = peer.get(nodeid)
        tally.peer_pass += peer_result is not None and peer_result.outcome == "passed"
        for message in dict.fromkeys(result.stood_in):
            key = (suite.name, re.sub(r"got .*", "got …", message))
            found.stood_in[key] = found.stood_in.get(key, 0) + 1
        p = peer_failed(nodeid, peer)
        if result.outcome == "passed":
            tally.passed += 1
            tally.stood_in += bool(result.stood_in)
        elif (r := refusal(result, suite, clnscl_dir)) is not None:
            tally.refused += 1
            counts = found.refused.setdefault((run, suite.name, r.reason), [0, 0])
            counts[0] += 1
            counts[1] += p is not None
        elif p is not None:
            tally.peer_too += 1
            entry = found.peer_too.setdefault((run, suite.name, re.sub(r"\d+", "N", first_line(p, 160))), [0, nodeid])
            entry[0] += 1
        else:
            tally.fail += 1
            also = f" (the peer stood in for: {'; '.join(result.stood_in)})" if result.stood_in else ""
            found.fails.append((run, suite.name, nodeid, first_line(result) + also))
    return tally


COLUMNS = {"run": "run", "peer_pass": "peer pass", "passed": "shim pass", "stood_in": "of them with stand-ins",
           "refused": "refused (documented)", "peer_too": "fails on peer too", "fail": "FAIL", "skipped": "skipped"}


def print_table(rows: list[tuple[str, Tally]], stand_in: bool) -> None:
    fields = [f for f in COLUMNS if stand_in or f != "stood_in"]
    total = Tally(**{f: sum(getattr(t, f) for _, t in rows) for f in Tally.__dataclass_fields__})
    table = [("suite", *(COLUMNS[f] for f in fields))]
    table += [(name, *(str(getattr(t, f)) for f in fields)) for name, t in rows + [("total", total)]]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i in (0, len(table) - 2):
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lightly", metavar="DIR", help="lightly's work tree or git directory")
    parser.add_argument("--pml", metavar="DIR", help="pytorch-metric-learning's work tree or git directory")
    parser.add_argument("--stand-in", action="store_true",
                        help="also run the tests with the peer's class standing in where the shim refuses a "
                             "construction (a documented refusal), so that the rest of such a test checks the shim")
    parser.add_argument("--device", default="auto", help="pml's TEST_DEVICE (default: cuda when available, else cpu)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for each pytest run (default 1200)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (copies, pytest logs)")
    args = parser.parse_args(argv)
    chosen = [(s, getattr(args, s.name)) for s in SUITES if getattr(args, s.name)]
    if not chosen:
        parser.error("give at least one of --lightly DIR, --pml DIR")
    started = time.perf_counter()
    clnscl_dir = str(Path(importlib.util.find_spec("clnscl").origin).parent) + os.sep
    device = args.device
    if device == "auto" and any(s.name == "pml" for s, _ in chosen):
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = ("peer", "shim") + (("stand-in",) if args.stand_in else ())
    peers = [(suite, directory, Peer(directory)) for suite, directory in chosen]
    tmp = Path(tempfile.mkdtemp(prefix="peer_suites_"))
    common = tmp / "plugins"
    common.mkdir()
    (common / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    print("The peers' own tests on clnscl's shims (imports swapped), and on the installed peers")
    tables: dict[str, list] = {run: [] for run in runs[1:]}
    found, broken = Findings(), False
    for suite, directory, peer in peers:
        try:
            version = importlib.metadata.version(suite.distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        kind = "work tree" if peer.work_tree else "git dir"
        print(f"\n{suite.name}: {suite.distribution} {version} installed; tests read from {directory} ({kind}, "
              f"HEAD {peer.commit()})")
        sources = gather(peer, suite.files)
        results = {}
        for run in runs:
            root, plugins = tmp / run / suite.name, tmp / run / f"{suite.name}-plugins"
            plugins.mkdir(parents=True)
            target = {"shim": suite.shim, "stand-in": STAND_IN}.get(run)
            if target == STAND_IN:
                (plugins / f"{STAND_IN}.py").write_text(stand_in_source(suite))
            for module in suite.modules if target else ():
                if importlib.util.find_spec(module.split(".")[0]) is not None:
                    (plugins / f"{proxy_name(module)}.py").write_text(proxy_source(module, suite, target))
            for path, source in sources.items():
                if target:
                    source, swapped, unswappable = swap_imports(source, suite, target)
                    if run == "shim" and (path in suite.files or swapped or unswappable):
                        print(f"  {path}: swapped {', '.join(swapped) or 'nothing'}"
                              + (f"; NOT swapped: {', '.join(unswappable)}" if unswappable else ""))
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_text(source)
        for run in runs:
            print(f"  pytest on the {run} ...", end="", flush=True)
            t0 = time.perf_counter()
            env = {"TEST_DEVICE": os.environ.get("TEST_DEVICE", device)} if suite.name == "pml" else {}
            results[run], problem = run_pytest(tmp / run / suite.name, [common, tmp / run / f"{suite.name}-plugins"],
                                               suite.files, env, args.timeout, tmp / f"{run}-{suite.name}.log")
            print(f" {time.perf_counter() - t0:.1f} s")
            if problem:
                broken = True
                print(f"  the {run} run broke down: {problem}")
                found.fails.append((run, suite.name, "(the pytest run)", problem))
        for run in runs[1:]:
            tables[run].append((suite.name, classify(run, suite, results[run], results["peer"], clnscl_dir, found)))

    print("\nThe shims, imports swapped:")
    print_table(tables["shim"], False)
    if args.stand_in:
        print("\nWith the peer's class standing in where a shim refuses a construction:")
        print_table(tables["stand-in"], True)
    print("\nrefused (documented):" + ("" if found.refused else " none"))
    for (run, name, reason), (count, on_peer) in found.refused.items():
        print(f"  {name} ({run}): {count} test(s), {on_peer} of them failing on the peer too: {reason}")
    if args.stand_in:
        print("\nconstructions the peer stood in for (tests):" + ("" if found.stood_in else " none"))
        for (name, message), count in found.stood_in.items():
            print(f"  {name}: {count}: {message}")
    print("\nfails on the peer as well (not counted against the shim):" + ("" if found.peer_too else " none"))
    for (run, name, message), (count, example) in found.peer_too.items():
        print(f"  {name} ({run}): {count} test(s), on the peer {message}\n      e.g. {example}")
    print("\nFAIL:" + ("" if found.fails else " none"))
    for run, name, nodeid, message in found.fails:
        print(f"  {name} ({run}): {nodeid}\n      {message}")
    print(f"\n{time.perf_counter() - started:.1f} s", end="")
    if args.keep:
        print(f"; the copies and the pytest logs are in {tmp}")
    else:
        print()
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if found.fails or broken else 0


if __name__ == "__main__":
    sys.exit(main())
