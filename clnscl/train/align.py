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
from types import SimpleNamespace

import torch

from .. import metrics
from .checkpoint import load_checkpoint
from .datasets import load_source
from .models import build_model
from .splits import run_data


def _model(state: dict, name: str | None, default_index: int, where: Path):
    names = list(state["run"]["objectives"])
    if name is None:
        name = names[min(default_index, len(names) - 1)]
    if name not in names:
        raise ValueError(f"model {name!r} is not in {where} (its objectives: {names})")
    sd = state["models"][names.index(name)]
    run = state["run"]
    in_channels = next(v for k, v in sd.items() if k.startswith("encoder.") and v.ndim == 4).shape[1]
    model = build_model(run["model"], in_channels, sd["head.weight"].shape[0], run["hidden_dim"],
                        run["projector_dim"], image_size=state["image_px"])
    model.load_state_dict(sd)
    return name, model.eval()


class _Batches:
    """Re-iterable batches of an image source (decoded when iterated)."""

    def __init__(self, source, size: int = 1024):
        self.source, self.size = source, size

    def __iter__(self):
        return (self.source.load(idx) for idx in torch.arange(len(self.source)).split(self.size))


def _reference_images(state: dict, everything: bool):
    """A's reference split (its seed, class subset, fraction and size), or all of its dataset."""
    run = state["run"]
    cfg = SimpleNamespace(**{**run, "data_root": state["data_root"], "eval_root": state.get("eval_root"),
                             "stream": state.get("stream", False)})
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
        name_a, model_a = _model(state_a, args.model_a, 0, path_a)
        name_b, model_b = _model(state_b, args.model_b, 1 if same_run else 0, path_b)
    except (FileNotFoundError, ValueError) as exc:
        print(f"clnscl align: {exc}", file=sys.stderr)
        return 2
    images = _reference_images(state_a, args.data == "all")
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
            print(f"| {rep} | gap_max_abs | {metrics.similarity_gap(fa, fb)['max_abs']:.6f} |")
    return 0
