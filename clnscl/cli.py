"""Command line: `clnscl train` (for now a short CL-vs-NSCL demo on built-in synthetic data) and `clnscl info`.

The demo trains two copies of a small MLP from the same initialisation on the same batches and the same
augmented views, one with CL (NT-Xent) and one with NSCL, and prints both losses, the CL−NSCL loss gap of
the CL model against its bound, the relative gap between their cosine-similarity matrices on a held-out set,
and how far their weights drift apart. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import contrastive_loss


def _mixture(n: int, classes: int, dim: int, gen: torch.Generator):
    centres = torch.randn(classes, dim, generator=gen) * 2.0
    y = torch.randint(0, classes, (n,), generator=gen)
    return centres[y] + torch.randn(n, dim, generator=gen), y


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random feature masking plus Gaussian jitter: two calls give two views."""
    keep = (torch.rand(x.shape, generator=gen) > 0.2).to(x.dtype)
    return x * keep + 0.3 * torch.randn(x.shape, generator=gen)


def _cos_gap(za: torch.Tensor, zb: torch.Tensor) -> float:
    sa, sb = F.normalize(za, dim=1), F.normalize(zb, dim=1)
    ga, gb = sa @ sa.T, sb @ sb.T
    return float((ga - gb).norm() / ga.norm())


@torch.no_grad()
def _weight_divergence(a: nn.Module, b: nn.Module) -> float:
    rel = [
        float((pa - pb).norm() / (0.5 * (pa.norm() + pb.norm())).clamp_min(1e-12))
        for pa, pb in zip(a.parameters(), b.parameters())
    ]
    return sum(rel) / len(rel)


def train_demo(steps: int, batch: int, temperature: float, seed: int, backend: str) -> dict:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    classes, dim = 10, 32
    x_train, y_train = _mixture(20_000, classes, dim, gen)
    x_ref, _ = _mixture(1_000, classes, dim, gen)
    cl_model = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, 64))
    nscl_model = copy.deepcopy(cl_model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (cl_model, nscl_model)]
    n = x_train.shape[0]
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch,), generator=gen)
        xb, yb = x_train[idx], y_train[idx]
        views = torch.stack((_augment(xb, gen), _augment(xb, gen)), dim=1)  # shared by both models
        losses = []
        for model, opt, objective in ((cl_model, opts[0], "cl"), (nscl_model, opts[1], "nscl")):
            loss = contrastive_loss(model(views), yb, objective=objective, temperature=temperature, backend=backend)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if step % max(1, steps // 10) == 0 or step == steps:
            with torch.no_grad():
                z = cl_model(views)
                gap = (contrastive_loss(z, yb, objective="cl", temperature=temperature, backend=backend)
                       - contrastive_loss(z, yb, objective="nscl", temperature=temperature, backend=backend)).item()
                n_max = int(torch.bincount(yb).max())
                bound = math.log1p(n_max * math.exp(2 / temperature) / (2 * batch - 2 * n_max))
                sim_gap = _cos_gap(cl_model(x_ref), nscl_model(x_ref))
            print(
                f"step {step:4d}  loss cl {losses[0]:.4f}  nscl {losses[1]:.4f}  gap {gap:.4f} (bound {bound:.2f})"
                f"  sim-matrix gap {sim_gap:.4f}  weight div {_weight_divergence(cl_model, nscl_model):.4f}"
                f"  {time.perf_counter() - start:.1f}s",
                flush=True,
            )
    return {"loss_cl": losses[0], "loss_nscl": losses[1], "gap": gap, "bound": bound}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="clnscl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a CL and an NSCL model under shared randomness (demo)")
    tr.add_argument("--steps", type=int, default=200, help="optimisation steps (default 200)")
    tr.add_argument("--batch", type=int, default=512, help="samples per batch, two views each (default 512)")
    tr.add_argument("--temperature", type=float, default=0.1, help="temperature τ (default 0.1)")
    tr.add_argument("--seed", type=int, default=0, help="seed of data, init and augmentations (default 0)")
    tr.add_argument("--backend", default="auto", help="loss backend: auto, reference, cpu, triton")
    sub.add_parser("info", help="versions and available backends")
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import report

        print(report())
        return 0
    result = train_demo(args.steps, args.batch, args.temperature, args.seed, args.backend)
    return 0 if result["gap"] <= result["bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
