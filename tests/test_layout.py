"""docs/layout.md (linked from the README) is the repository's tree: one line per folder and file, every file listed
once, nothing listed that is not there."""
from __future__ import annotations

import os
import subprocess

from tests.support.processes import REPO

BRANCHES = set("│├└─ ")


def layout_paths(readme: str) -> list[str]:
    """The paths of the ```text block under "## Layout", folders with a trailing slash."""
    block = readme.split("## Layout", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    paths, stack = [], []
    for line in block.splitlines():
        start = next(i for i, ch in enumerate(line) if ch not in BRANCHES)
        depth, name = start // 4, line[start:].split()[0]
        assert start % 4 == 0 and depth <= len(stack), f"bad indentation: {line!r}"
        stack = stack[:depth]
        paths.append("".join(stack) + name)
        if name.endswith("/"):
            stack.append(name)
    return paths


def repository_files() -> set[str]:
    """The tracked files outside hidden folders (git ls-files; a walk where there is no git checkout)."""
    if (REPO / ".git").exists():
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        files = out.splitlines()
    else:
        files = []
        for root, dirs, names in os.walk(REPO):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "runs", "build", "dist")
                       and not d.endswith(".egg-info")]
            files += [os.path.relpath(os.path.join(root, n), REPO) for n in names if not n.endswith((".pyc", ".so"))]
    return {f for f in files if not f.startswith(".")}


def test_the_layout_lists_every_file_once():
    listed = layout_paths((REPO / "docs" / "layout.md").read_text())
    assert len(listed) == len(set(listed)), sorted({p for p in listed if listed.count(p) > 1})
    files = {p for p in listed if not p.endswith("/")}
    folders = {p for p in listed if p.endswith("/")}
    actual = repository_files()
    assert sorted(actual - files) == [], "files missing from docs/layout.md"
    assert sorted(files - actual) == [], "docs/layout.md lists files that do not exist"
    assert folders == {p for f in actual for p in _parents(f)}, "the listed folders are not those of the files"


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]


def test_the_parser_reads_a_tree():
    text = "## Layout\n\n```text\na/   x\n├── b.py  y\n└── c/    z\n    └── d.py w\ne.md  v\n```\n"
    assert layout_paths(text) == ["a/", "a/b.py", "a/c/", "a/c/d.py", "e.md"]


def test_the_readme_is_a_landing_page():
    """At most 250 lines (issue 23): the tree, the command line's reference and the migration details live in
    docs/, and the README links them."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for page in ("docs/layout.md", "docs/trainer.md", "docs/migration.md", "docs/design.md", "BENCHMARKS.md",
                 "CITATION.cff", "LICENSE", "CHANGELOG.md"):
        assert f"]({page})" in text, page
        assert (REPO / page).is_file(), page
