"""Reproducing the paper's CIFAR-100 experiment: CL against NSCL, SupCon and CE under shared randomness.

Luthra, Mishra, Galanti, "On the Alignment Between Supervised and Self-Supervised Contrastive Learning"
(arXiv 2510.08852) train a SimCLR model (CL) and its supervised counterparts from the same initial weights, on
the same batches and the same augmented views, and follow how aligned their representations stay. The NSCL
authors' CIFAR-100 settings are configs/cifar100.yaml (ResNet-50, batch 1024, LARS, τ = 0.1, 1200 epochs).

With no arguments (any machine, no GPU needed, about half a minute) the example makes a dry run:

1. it loads configs/cifar100.yaml through `clnscl.train.config.load_config` and prints the plan: data, model,
   batch, epochs and steps, objectives, evaluation cadence, and the command of the real run;
2. it estimates the GPU-hours: the forward and backward FLOPs of one model per view, counted by
   `torch.utils.flop_counter.FlopCounterMode` on the meta device (shapes only, nothing computed), times the
   views per image, the images per epoch, the epochs and the coupled models, plus the losses and the
   evaluations, at a stated sustained throughput of one H100 in bf16; then the same for cheaper variants;
3. it trains a tiny version of the same run on the CPU — the same objectives, optimiser, schedule, evaluations
   and report, through the same entry point as `clnscl train` (`clnscl.train.run.train`) — on the handwritten
   digits that ship inside scikit-learn, a few dozen steps, into ./runs/reproduce_paper_tiny.

With `--data-root DIR` (the python version of CIFAR-100 extracted there; nothing is downloaded) and a CUDA
device it runs the real thing, `clnscl train --config configs/cifar100.yaml --set data_root=DIR --out OUT
--resume auto` (rerun the same command to continue a killed run); `--variant` picks a cheaper variant.

    python examples/reproduce_paper.py                                  # dry run + tiny CPU run
    python examples/reproduce_paper.py --data-root /data/cifar          # the paper's run (one GPU)
    python examples/reproduce_paper.py --data-root /data/cifar --variant short

docs/reproducing.md gives the data layout, what the run writes and which records match which of the paper's
figures.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import clnscl
from clnscl.train.batches import VIEWS
from clnscl.train.config import CONTRASTIVE_OBJECTIVES, DATASET_CLASSES, load_config
from clnscl.train.models import build_model
from clnscl.train.run import train
from clnscl.train.samplers import UniformBatches

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cifar100.yaml"
CONFIG_SHOWN = "configs/cifar100.yaml"
# The throughput the estimate assumes. Peak: NVIDIA's H100 SXM5 datasheet, bf16 tensor cores, dense (the 1,979
# TFLOP/s it also lists is with 2:4 sparsity). Utilisation: our assumption, not a measurement (the trainer has not
# yet run on a GPU): a ResNet's batch norms and activations cost memory traffic that FlopCounterMode does not
# count (it counts the matrix products and convolutions, 2 FLOP a multiply-add), so a plain PyTorch ResNet-50
# (bf16 autocast, channels_last, augmentations on the GPU) keeps the tensor cores busy only a small part of the time.
H100_BF16_DENSE_TFLOPS = 989.4
UTILISATION = 0.10
SPLITS = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}  # training / test images of the datasets
IMAGE_PX = {"digits": 8, "cifar10": 32, "cifar100": 32}
# where clnscl.train.datasets.load_cifar reads a dataset under data_root (two of its files), and its archive
CIFAR_FOLDER = {"cifar10": ("cifar-10-batches-py", ["data_batch_1", "test_batch"], "cifar-10-python.tar.gz"),
                "cifar100": ("cifar-100-python", ["train", "test"], "cifar-100-python.tar.gz")}
SNAPSHOTS_300 = "snapshot_epochs=10,20,30,40,50,60,70,80,90,100,200,300"  # a list key: brackets optional
# Cheaper variants: the overrides of each, and why it is worth running.
VARIANTS = {
    "paper": ([], "the NSCL authors' settings (the paper's Figure 2 run)"),
    "short": (["epochs=300", SNAPSHOTS_300], "300 epochs, the span of the paper's Figure 4 (its τ = 0.1 curve is "
                                             "the reference)"),
    "small": (["epochs=300", SNAPSHOTS_300, "model=resnet18"], "300 epochs of ResNet-18: the cheapest look at the "
                                                                "ordering of the four models (no figure of the "
                                                                "paper to compare with)"),
}
# The tiny CPU run: the same configuration with the data, model, batch and length made small.
TINY = ["dataset=digits", "data_root=null", "eval_split=holdout", "model=small_cnn", "augment.preset=digits",
        "batch_size=128", "epochs=4", "warmup_epochs=1", "hidden_dim=128", "projector_dim=64", "eval_every=11",
        "probe_size=null", "snapshot_epochs=[]", "tensorboard=false", "device=cpu"]
TINY_OUT = Path("runs") / "reproduce_paper_tiny"


# ------------------------------------------------------------------------------------------------ the plan
def split_sizes(cfg) -> tuple[int, int, int]:
    """(training images, reference images, probe images) of a CIFAR run as `clnscl.train.splits.run_data` makes
    them, from the datasets' known sizes (the dry run reads no data)."""
    n_train, n_test = SPLITS[cfg.dataset]
    if cfg.eval_split == "test":
        reference = min(n_test, cfg.reference_size or n_test)
    else:
        reference = round(cfg.reference_fraction * n_train)
        n_train -= reference
    probe = min(n_train, cfg.probe_size or n_train)
    return n_train, reference, probe


def evaluation_steps(total: int, every: int) -> int:
    """How many evaluations `clnscl.train.fit` makes: at step 1, every `every` steps and at the last step."""
    return len({1, total} | set(range(every, total + 1, every)))


def gap_views(reference: int, batch_size: int, count: int) -> int:
    """Views of the loss gap's batches (`clnscl.train.batches.GapBatches`): the first `count` of the reference set
    cut into ⌈reference / batch_size⌉ batches, each sample in VIEWS views."""
    parts = torch.arange(reference).tensor_split(-(-reference // batch_size))[:count]
    return VIEWS * sum(len(p) for p in parts)


def plan(cfg, overrides: list[str]) -> dict:
    """Everything the estimate needs, from the configuration (and the datasets' sizes)."""
    n_train, reference, probe = split_sizes(cfg)
    steps_per_epoch = UniformBatches(n_train, cfg.batch_size, torch.Generator()).epoch_length
    steps = cfg.epochs * steps_per_epoch
    classes = cfg.num_classes or DATASET_CLASSES[cfg.dataset]
    return dict(cfg=cfg, overrides=overrides, n_train=n_train, reference=reference, probe=probe, classes=classes,
                steps_per_epoch=steps_per_epoch, steps=steps, images_per_epoch=steps_per_epoch * cfg.batch_size,
                evaluations=evaluation_steps(steps, cfg.eval_every), px=IMAGE_PX[cfg.dataset],
                gap_views=gap_views(reference, cfg.batch_size, cfg.gap_batches))


def print_plan(p: dict) -> None:
    """The plan of a run: data, model, objectives, batch and optimiser, length, evaluations, snapshots."""
    cfg = p["cfg"]
    models = cfg.objectives
    print(f"plan ({CONFIG_SHOWN}{' with ' + ' '.join(p['overrides']) if p['overrides'] else ''}, read by "
          "clnscl.train.config.load_config):")
    print(f"  dataset     {cfg.dataset}: {p['n_train']} training images of {p['px']}×{p['px']} px, {p['classes']} "
          f"classes; reference set {p['reference']} images (eval_split={cfg.eval_split}: the test batch); probe "
          f"set {p['probe']} training images")
    print(f"  model       {cfg.model} (CIFAR stem) with a projector of hidden width {cfg.hidden_dim} and output "
          f"{cfg.projector_dim}; CE trains a linear head on the normalised projection")
    print(f"  objectives  {', '.join(models)}: {len(models)} coupled models (anchor {cfg.anchor}), the same initial "
          "weights, batches and augmented views")
    print(f"  batch       {cfg.batch_size} images × {VIEWS} views ({cfg.augment.preset}); {cfg.optimizer.upper()} at "
          f"lr {cfg.lr} ({cfg.lr_scaling} scaling to batch {cfg.batch_size}: {cfg.scaled_lr():g}), weight decay "
          f"{cfg.weight_decay:g}, {cfg.warmup_epochs} warm-up epochs then cosine, gradient clip {cfg.grad_clip}, "
          f"τ = {cfg.temperature}")
    print(f"  length      {cfg.epochs} epochs × {p['steps_per_epoch']} steps = {p['steps']} steps "
          f"({p['images_per_epoch']} images an epoch, the last incomplete batch dropped)")
    print(f"  evaluation  every {cfg.eval_every} steps (about every {cfg.eval_every / p['steps_per_epoch']:.1f} "
          f"epochs) and at the first and last step: {p['evaluations']} evaluations of alignment (z and h), weight "
          f"divergence, loss gap, theory records, NCC and {cfg.knn_k}-NN accuracy")
    if cfg.snapshot_epochs:
        print(f"  snapshots   checkpoints kept after epochs {', '.join(map(str, cfg.snapshot_epochs))}")


# ------------------------------------------------------------------------------------------------ the cost
def measured_flops(cfg, px: int, classes: int) -> dict[str, float]:
    """FLOPs per view of one model (encoder + projector): forward, of which the encoder, and forward + backward;
    and forward + backward of one contrastive loss on a batch (reference backend). Counted by FlopCounterMode on
    the meta device: the shapes only, nothing allocated or computed."""
    batch = 4  # batch norm in training mode needs more than one sample per channel
    channels = 1 if cfg.dataset == "digits" else 3
    with torch.device("meta"):
        model = build_model(cfg.model, channels, classes, cfg.hidden_dim, cfg.projector_dim, image_size=px)
        x = torch.empty(batch, channels, px, px)
        z = torch.empty(cfg.batch_size, VIEWS, cfg.projector_dim, requires_grad=True)
        labels = torch.zeros(cfg.batch_size, dtype=torch.long)
    counts = {}
    for key, run in (("encoder", lambda: model.encoder(x)), ("forward", lambda: model(x)),
                     ("forward_backward", lambda: model(x)[1].sum().backward())):
        with FlopCounterMode(display=False) as counter:
            run()
        counts[key] = counter.get_total_flops() / batch
    with FlopCounterMode(display=False) as counter:
        clnscl.contrastive_loss(z, labels, objective="nscl", temperature=cfg.temperature,
                                backend="reference").backward()
    counts["loss"] = counter.get_total_flops()
    return counts


def estimate(p: dict, tflops: float, utilisation: float, indent: str = "  ") -> float:
    """Print the FLOP count of the run `p` and its GPU-hours at `utilisation` of `tflops`; return the hours."""
    cfg = p["cfg"]
    f = measured_flops(cfg, p["px"], p["classes"])
    models = len(cfg.objectives)
    contrastive = sum(o in CONTRASTIVE_OBJECTIVES for o in cfg.objectives)
    per_image = VIEWS * f["forward_backward"]
    training = per_image * p["images_per_epoch"] * cfg.epochs * models
    losses = f["loss"] * p["steps"] * contrastive
    per_evaluation = f["forward"] * (models * (p["reference"] + p["probe"]) + p["gap_views"])
    evaluations = p["evaluations"] * per_evaluation
    total = training + losses + evaluations
    sustained = tflops * utilisation
    hours = total / (sustained * 1e12) / 3600
    print(f"{indent}per view: forward {f['forward']:.4e} FLOP (encoder {100 * f['encoder'] / f['forward']:.1f} %), "
          f"forward + backward {f['forward_backward']:.4e} FLOP ({cfg.model} at {p['px']}×{p['px']} px)")
    print(f"{indent}training: {per_image:.4e} FLOP per image ({VIEWS} views) × {p['images_per_epoch']} images per "
          f"epoch × {cfg.epochs} epochs × {models} models = {training:.4e} FLOP")
    print(f"{indent}losses: {f['loss']:.4e} FLOP per step × {p['steps']} steps × {contrastive} contrastive models "
          f"= {losses:.4e} FLOP")
    print(f"{indent}evaluations: {p['evaluations']} × {per_evaluation:.4e} FLOP (forward of {models} models over "
          f"{p['reference']} reference + {p['probe']} probe images, of the anchor over {p['gap_views']} loss-gap "
          f"views) = {evaluations:.4e} FLOP")
    print(f"{indent}throughput: {tflops:g} TFLOP/s peak (H100 SXM, bf16, dense) × {100 * utilisation:g} % assumed "
          f"utilisation = {sustained:.4g} TFLOP/s sustained")
    print(f"{indent}estimate: {total:.4e} FLOP / {sustained:.4g} TFLOP/s = {hours:.4g} GPU-hours "
          f"(about {hours / 24:.2g} days on one H100)")
    images_per_s = p["images_per_epoch"] * cfg.epochs / (hours * 3600)
    print(f"{indent}check: that is an average of {images_per_s:.0f} training images a second through the {models} "
          "coupled models; the records' samples_per_s give the measured rate after the first evaluations")
    return hours


# ------------------------------------------------------------------------------------------------ the runs
def missing_data(cfg, data_root: Path) -> str | None:
    """Why DIR does not hold the dataset as `clnscl.train.datasets.load_cifar` reads it (None: it does)."""
    folder, files, archive = CIFAR_FOLDER[cfg.dataset]
    base = data_root / folder if (data_root / folder).is_dir() else data_root
    absent = [name for name in files if not (base / name).is_file()]
    if not absent:
        return None
    return (f"--data-root {data_root}: no {cfg.dataset} there ({', '.join(str(base / n) for n in absent)} missing). "
            f"Expected the python version of the dataset extracted under DIR: DIR/{folder}/{files[0]} and "
            f"DIR/{folder}/{files[1]} (or those files directly in DIR), as the archive {archive} from "
            "https://www.cs.toronto.edu/~kriz/cifar.html unpacks; nothing is downloaded")


def real_run(args, overrides: list[str], hours: float) -> int:
    """`clnscl train` on the real data, on the GPU (refused, with the reason, when the data or the GPU is missing)."""
    cfg = load_config(CONFIG, [f"data_root={args.data_root}", *overrides])
    why = missing_data(cfg, Path(args.data_root).expanduser())
    if why is not None:
        print(f"reproduce_paper.py: {why}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(f"reproduce_paper.py: the {args.variant} run needs a CUDA device (estimated {hours:.3g} GPU-hours on "
              "an H100) and this machine has none; run without --data-root for the dry run", file=sys.stderr)
        return 2
    sets = [a for o in [f"data_root={Path(args.data_root).expanduser().resolve()}", *overrides] for a in ("--set", o)]
    shown = ["clnscl", "train", "--config", CONFIG_SHOWN, *sets, "--out", args.out, "--resume", "auto"]
    print("running: " + " ".join(shown), flush=True)
    command = [sys.executable, "-m", "clnscl", "train", "--config", str(CONFIG), *shown[4:]]
    return subprocess.run(command).returncode


def tiny_run() -> None:
    """The same pipeline at a toy scale on the CPU, into ./runs/reproduce_paper_tiny."""
    cfg = load_config(CONFIG, TINY)
    p = plan_tiny(cfg)
    print(f"\ntiny run on the CPU ({CONFIG_SHOWN} with {' '.join(TINY)}): {', '.join(cfg.objectives)} on the "
          f"{p['n_train']} training digits, {p['steps']} steps of {cfg.batch_size}, {p['evaluations']} evaluations",
          flush=True)
    records = train(cfg, TINY_OUT, overwrite=True)
    last = records[-1]
    finite = all(math.isfinite(v) for r in records for v in r.values() if isinstance(v, float))
    cka = ", ".join(f"{m} {last[f'cka_cosine/{m}']:.3f}" for m in cfg.objectives[1:])
    print(f"tiny run: {len(records)} records, last at step {last['step']}, every value finite: {finite}; final CKA "
          f"(cosine, z) with {cfg.anchor}: {cka}")
    print(f"tiny run written to {TINY_OUT.resolve()} (metrics.jsonl, metrics.csv, checkpoint.pt, summary.md, figures)")


def plan_tiny(cfg) -> dict:
    """Steps and evaluations of the tiny run (the digits' holdout split, as `run_data` makes it)."""
    from clnscl.train.datasets import load_digits_dataset
    from clnscl.train.splits import split_indices

    _, labels = load_digits_dataset()
    train_idx, _ = split_indices(labels, cfg.reference_fraction, cfg.seed)
    steps = cfg.epochs * UniformBatches(len(train_idx), cfg.batch_size, torch.Generator()).epoch_length
    return dict(n_train=len(train_idx), steps=steps, evaluations=evaluation_steps(steps, cfg.eval_every))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", metavar="DIR", help="the directory holding cifar-100-python/ (train, test): "
                                                           "run the real thing on the GPU")
    parser.add_argument("--variant", choices=list(VARIANTS), default="paper", help="the run to make (default: the "
                                                                                  "paper's settings)")
    parser.add_argument("--out", metavar="DIR", help="run directory of the real run (default: runs/cifar100, "
                                                     "runs/cifar100_<variant> for a cheaper variant)")
    parser.add_argument("--utilisation", type=float, default=UTILISATION,
                        help=f"assumed share of the H100's bf16 peak sustained in training (default {UTILISATION})")
    args = parser.parse_args(argv)
    if not 0 < args.utilisation <= 1:
        parser.error(f"--utilisation {args.utilisation}: a share of the peak, in (0, 1]")
    outs = {name: "runs/cifar100" + ("" if name == "paper" else f"_{name}") for name in VARIANTS}
    outs[args.variant] = args.out = args.out or outs[args.variant]
    shown_root = args.data_root or "DIR"
    print("Reproducing Luthra, Mishra, Galanti, arXiv 2510.08852, on CIFAR-100 with the NSCL authors' settings")
    hours = {}
    for name, (overrides, why) in VARIANTS.items():
        cfg = load_config(CONFIG, [f"data_root={shown_root}", *overrides])
        p = plan(cfg, overrides)
        print(f"\n[{name}] {why}")
        if name == "paper" or name == args.variant:
            print_plan(p)
        sets = " ".join(f"--set {o}" for o in [f"data_root={shown_root}", *overrides])
        print(f"  command     clnscl train --config {CONFIG_SHOWN} {sets} --out {outs[name]} --resume auto")
        print("  cost (FLOPs counted by torch.utils.flop_counter.FlopCounterMode on the meta device):")
        hours[name] = estimate(p, H100_BF16_DENSE_TFLOPS, args.utilisation, indent="    ")
    if args.data_root is not None:
        return real_run(args, VARIANTS[args.variant][0], hours[args.variant])
    tiny_run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
