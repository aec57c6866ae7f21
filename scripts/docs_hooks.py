"""MkDocs hooks of the docs site (mkdocs.yml): the pages generated from the repository — benchmarks.md from
BENCHMARKS.md and configuration.md from the trainer's configuration fields — and the docs pages' links to the
repository's root files turned into the site's pages."""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
# links of docs/*.md to root files that the site holds as pages of its own
SITE_PAGES = {"../BENCHMARKS.md": "benchmarks.md", "../README.md": "index.md"}
LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|#)([^)#]+)(#[^)]*)?\)")


def on_files(files, config):
    """Add the generated pages."""
    files.append(File.generated(config, "benchmarks.md", content=_benchmarks()))
    files.append(File.generated(config, "configuration.md", content=_configuration()))
    return files


def on_page_markdown(markdown, page, config, files):
    """Point the links to root files at the site's pages."""
    for old, new in SITE_PAGES.items():
        markdown = markdown.replace(f"]({old}", f"]({new}")
    return markdown


def _benchmarks() -> str:
    """BENCHMARKS.md with its links seen from docs/: docs pages by their site names, other files as paths."""
    def relink(m: re.Match) -> str:
        text, target, anchor = m.group(1), m.group(2), m.group(3) or ""
        if target.startswith("docs/"):
            return f"[{text}]({target.removeprefix('docs/')}{anchor})"
        return text if text.startswith("`") else f"`{text}`"

    return LINK.sub(relink, (ROOT / "BENCHMARKS.md").read_text())


def _configuration() -> str:
    """Every key of the trainer's configuration, from the fields themselves (clnscl.train.config.entries)."""
    from clnscl.train.config import PRESETS, entries

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Configuration reference",
        "",
        "Every key of `clnscl train`'s configuration (`clnscl.train.config.Config`; the section `augment` is",
        "`AugmentConfig`), generated from the fields themselves: the same text as `clnscl train --help`. Set keys",
        "in a YAML file (`--config FILE.yaml`, see `configs/`) or with `--set key=value` (nested keys dotted:",
        "`--set augment.preset=simclr_cifar`; a list may leave out its brackets: `--set objectives=cl,nscl`).",
        "A bad key or value raises `ConfigError` naming the key, with a did-you-mean for an unknown key. Keys",
        "marked **run** must match the checkpoint's when a run resumes.",
        "",
        f"Augmentation presets (`augment.preset`): {', '.join(f'`{p}`' for p in PRESETS)}. Setting the preset",
        "resets the augment keys to it; keys set after it, or beside it in one mapping, change it.",
        "",
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for e in entries():
        meaning = cell(e["help"])
        if e["choices"]:
            meaning += " — one of " + ", ".join(f"`{c}`" for c in e["choices"])
        if e["run"]:
            meaning += " (**run**)"
        lines.append(f"| `{e['key']}` | {cell(e['type'])} | `{cell(e['default'])}` | {meaning} |")
    return "\n".join(lines) + "\n"
