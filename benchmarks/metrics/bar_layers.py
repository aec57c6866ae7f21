"""Layer-by-layer CKA of two ResNet-18s (torchvision, CIFAR stem), all 8 residual blocks against all 8, on
random CIFAR-sized images: clnscl's `layer_alignment` against pytorch-cka and torch-cka in the same run, time
and peak memory, each in a fresh process.

    python -m benchmarks.metrics.bar_layers                     # N = 10,000 images, batches of 250
    python -m benchmarks.metrics.bar_layers --n 2000 --batch 200

Methods: `clnscl-minibatch` (the unbiased-HSIC minibatch estimator on the flattened block outputs, as both
peers compute it), `pytorch-cka` (`cka.compute_cka`), `torch-cka` (`torch_cka.CKA.compare`), and, computing
another quantity, `clnscl-exact-avg` (the whole data set's linear CKA of the channel-pooled block outputs,
exact in float64). Memory is the resident-set high-water mark above the process's RSS once the models and
images exist (support/memory.py). Before timing, the peers are checked against clnscl's minibatch matrix on
float64 copies of the models and 48 images (pytorch-cka clamps to [0, 1]): a disagreement above 1e-5 fails the
run. The timed runs are float32, as the peers are used; their matrices' distance from clnscl's (whose HSIC sums
are float64) is reported: the unbiased HSIC of a large Gram matrix cancels heavily, and float32 loses it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from benchmarks.support.fmt import fmt_bytes, fmt_time
from benchmarks.support.memory import peak_above, run_probe

BLOCKS = [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]
METHODS = ("clnscl-minibatch", "pytorch-cka", "torch-cka", "clnscl-exact-avg")
AGREE = 1e-5


def models_and_data(n: int, seed: int = 0):
    """Two ResNet-18 encoders (different seeds, eval mode) and n random 3 × 32 × 32 images."""
    from clnscl.train.models import resnet

    nets = []
    for s in (seed, seed + 1):
        torch.manual_seed(s)
        nets.append(resnet("resnet18", 3, small_images=True)[0].eval())
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 7))
    return nets, images


def run(method: str, nets, images, batch: int) -> torch.Tensor:
    """The 8 × 8 block CKA matrix by `method`."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=batch)
    a, b = nets
    if method.startswith("clnscl"):
        from clnscl.metrics import layer_alignment

        kw = {"method": "minibatch"} if method == "clnscl-minibatch" else {"method": "exact", "pool": "avg"}
        return layer_alignment(a, b, loader, BLOCKS, BLOCKS, **kw).cka.float()
    if method == "pytorch-cka":
        import cka

        return cka.compute_cka(a, b, loader, layers=BLOCKS, model2_layers=BLOCKS, device="cpu", progress=False)[0]
    import warnings

    import torch_cka

    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(images.dtype)  # its HSIC makes its vector of ones in the default dtype
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its "identical names" warning
            peer = torch_cka.CKA(a, b, "resnet18_a", "resnet18_b", BLOCKS, BLOCKS, device="cpu")
            peer.compare(loader)
    finally:
        torch.set_default_dtype(default)
    return peer.export()["CKA"]


def check_float64(n: int = 48, batch: int = 12) -> dict[str, float]:
    """Each peer's matrix on float64 copies of the models against clnscl's minibatch one: max abs difference."""
    nets, images = models_and_data(n)
    nets, images = [m.double() for m in nets], images.double()
    ours = run("clnscl-minibatch", nets, images, batch).double()
    out = {}
    for m in ("pytorch-cka", "torch-cka"):
        try:
            theirs = run(m, nets, images, batch).double()
        except ImportError:
            continue
        out[m] = float((theirs - (ours.clamp(0, 1) if m == "pytorch-cka" else ours)).abs().max())
    return out


def probe(method: str, n: int, batch: int) -> dict:
    nets, images = models_and_data(n)
    with torch.no_grad():  # warm-up: the first forward pass allocates the allocator's pools
        nets[0](images[:batch])
    value, seconds, extra = peak_above(lambda: run(method, nets, images, batch))
    return {"method": method, "n": n, "seconds": seconds, "extra_bytes": extra, "cka": value.tolist()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--probe", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe, args.n, args.batch)))
        return 0
    agree = check_float64()
    print(f"float64 agreement with clnscl-minibatch (48 images): {agree}")
    ok = all(d <= AGREE for d in agree.values())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; N = {args.n:,} images of 3 × 32 × 32, batches of {args.batch}, "
          f"8 × 8 ResNet-18 blocks", flush=True)
    results = {m: run_probe("benchmarks.metrics.bar_layers", m, "--n", str(args.n), "--batch", str(args.batch),
                            method=m) for m in args.methods}
    ours = results.get("clnscl-minibatch")
    print("\n| method | time | peak memory above the inputs | max abs diff from clnscl-minibatch |")
    print("| --- | --- | --- | --- |")
    for m, r in results.items():
        if "error" in r:
            print(f"| {m} | error: {r['error']} | | |")
            ok = False
            continue
        diff = "—"
        if ours is not None and "error" not in ours and m in ("pytorch-cka", "torch-cka"):
            mine = torch.tensor(ours["cka"])
            d = float((torch.tensor(r["cka"]) - (mine.clamp(0, 1) if m == "pytorch-cka" else mine)).abs().max())
            diff = f"{d:.2e}"
        print(f"| {m} | {fmt_time(r['seconds'])} | {fmt_bytes(r['extra_bytes'])} | {diff} |")
    if ours is not None and "error" not in ours:
        for m in ("pytorch-cka", "torch-cka"):
            if m in results and "error" not in results[m]:
                print(f"{m} / clnscl-minibatch: time {results[m]['seconds'] / ours['seconds']:.2f}×, memory "
                      f"{results[m]['extra_bytes'] / max(ours['extra_bytes'], 1):.2f}×")
    print(f"\nfloat64 agreement within {AGREE}, every method ran: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
