"""`clnscl align A B`: alignment between two trained models, each a (checkpoint, objective) of a run.

A and B are run directories or checkpoint files written by `clnscl train`; `--model-a/--model-b` pick the
objective's model in each (default: the anchor of A, and the first non-anchor of B, or its anchor when B is
another run). The data are the reference split of A's run (its seed, class subset and fraction), or all of the
dataset with --data all. Prints every metric of StreamingAlignment, plus with --pairwise RBF CKA,
Spearman RSA and the largest |Σ_A − Σ_B| from the pairwise engine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .. import metrics
from .checkpoint import load_checkpoint
from .config import Config, run_keys
from .datasets import load_source
from .models import build_model
from .splits import run_data


def run_config(state: dict) -> Config:
    """The configuration of a checkpoint's run: its saved config, or for a checkpoint older than that, its run
    keys and data directories (every other key, and a key the checkpoint predates, has its default)."""
    if "config" in state:
        return Config.from_dict(state["config"])
    saved = {key: state[key] for key in ("data_root", "eval_root", "stream") if key in state}
    run = {k: v for k, v in state["run"].items() if k in run_keys()}  # not fit's own (total_steps)
    return Config.from_dict({**run, **saved})


def _model(state: dict, cfg: Config, name: str | None, default_index: int, where: Path):
    names = cfg.objectives
    if name is None:
        name = names[min(default_index, len(names) - 1)]
    if name not in names:
        raise ValueError(f"model {name!r} is not in {where} (its objectives: {names})")
    sd = state["models"][names.index(name)]
    in_channels = next(v for k, v in sd.items() if k.startswith("encoder.") and v.ndim == 4).shape[1]
    model = build_model(cfg.model, in_channels, sd["head.weight"].shape[0], cfg.hidden_dim, cfg.projector_dim,
                        image_size=state["image_px"])
    model.load_state_dict(sd)
    return name, model.eval()


class _Batches:
    """Re-iterable batches of an image source (decoded when iterated)."""

    def __init__(self, source, size: int = 1024):
        self.source, self.size = source, size

    def __iter__(self):
        return (self.source.load(idx) for idx in torch.arange(len(self.source)).split(self.size))


def _reference_images(cfg: Config, everything: bool):
    """A's reference split (its seed, class subset, fraction and size), or all of its dataset."""
    if everything:
        return load_source(cfg)
    return run_data(cfg).reference


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="clnscl align", description=__doc__.splitlines()[0])
    ap.add_argument("a", metavar="CKPT_A", help="run directory or checkpoint.pt")
    ap.add_argument("b", metavar="CKPT_B", help="run directory or checkpoint.pt")
    ap.add_argument("--model-a", help="objective of the model to take from A (default: its anchor)")
    ap.add_argument("--model-b", help="objective of the model to take from B")
    ap.add_argument("--data", choices=("reference", "all"), default="reference",
                    help="A's reference split (default) or all of A's dataset")
    ap.add_argument("--pairwise", action="store_true", help="also RBF CKA, Spearman RSA and max |Σ_A − Σ_B|")
    args = ap.parse_args(argv)
    try:
        path_a, state_a = load_checkpoint(args.a)
        path_b, state_b = load_checkpoint(args.b)
        same_run = path_a.resolve() == path_b.resolve()
        cfg_a = run_config(state_a)
        name_a, model_a = _model(state_a, cfg_a, args.model_a, 0, path_a)
        name_b, model_b = _model(state_b, run_config(state_b), args.model_b, 1 if same_run else 0, path_b)
    except (FileNotFoundError, ValueError) as exc:
        print(f"clnscl align: {exc}", file=sys.stderr)
        return 2
    images = _reference_images(cfg_a, args.data == "all")
    loader = _Batches(images)
    print(f"A = {path_a} [{name_a}], B = {path_b} [{name_b}], {len(images)} samples\n")
    print("| representation | metric | value |\n| --- | --- | --- |")
    for rep, select in (("z", lambda out: out[1]), ("h", lambda out: out[0])):
        acc, kept = metrics.align_models(model_a, model_b, loader, select=select, keep_features=args.pairwise,
                                         dtype=torch.float32)
        for key, value in acc.compute().items():
            print(f"| {rep} | {key} | {value:.6f} |")
        if args.pairwise:
            fa, fb = kept
            print(f"| {rep} | cka_rbf | {metrics.cka(fa, fb, 'rbf'):.6f} |")
            print(f"| {rep} | rsa_spearman (cosine RDM) | {metrics.rsa(fa, fb, 'cosine', 'spearman'):.6f} |")
            print(f"| {rep} | gap_max_abs | {metrics.similarity_gap(fa, fb, max_abs=True)['max_abs']:.6f} |")
    return 0
