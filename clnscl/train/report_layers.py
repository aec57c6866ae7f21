"""The per-layer part of `clnscl report` (records of `layer_alignment=true`): ``layers.png``, one panel per
compared model, the linear CKA of each block of the anchor with the same block of that model (rows, from the
first block to z) at every evaluation (columns, labelled by epoch)."""
from __future__ import annotations

import math

PREFIX = "layer_cka/"


def has_layers(records: list[dict]) -> bool:
    return any(k.startswith(PREFIX) for r in records for k in r)


def _blocks(records: list[dict]) -> dict[str, list[str]]:
    """Every compared model's blocks, in record order."""
    out: dict[str, list[str]] = {}
    for r in records:
        for key in r:
            if key.startswith(PREFIX):
                model, block = key[len(PREFIX):].split("/", 1)
                if block not in out.setdefault(model, []):
                    out[model].append(block)
    return out


def layers_figure(records: list[dict], new, save) -> list[str]:
    """Draw layers.png with the report's figure helpers."""
    blocks = _blocks(records)
    rows = [r for r in records if any(k.startswith(PREFIX) for k in r)]
    steps = [r["step"] for r in rows]
    epochs = [float(r.get("epoch", r["step"])) for r in rows]
    fig, axes = new(len(blocks), width=max(4.0, 0.25 * len(steps) + 3.0), height=max(3.0, 0.3 * max(
        len(b) for b in blocks.values()) + 1.5))
    image = None
    for ax, (model, names) in zip(axes, blocks.items()):
        grid = [[float(r.get(f"{PREFIX}{model}/{b}", math.nan)) for r in rows] for b in names]
        image = ax.imshow(grid, aspect="auto", origin="lower", vmin=0.0, vmax=1.0, cmap="magma",
                          interpolation="nearest")
        ax.grid(False)
        ax.set_yticks(range(len(names)), [b.removeprefix("encoder.") for b in names], fontsize=7)
        ticks = sorted({0, len(steps) - 1, *range(0, len(steps), max(1, len(steps) // 6))})
        ax.set_xticks(ticks, [f"{epochs[t]:.3g}" for t in ticks], fontsize=7)
        ax.set_xlabel("epoch")
        ax.set_title(f"linear CKA per block: {model} vs the anchor", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8)
    save(fig, "layers.png")
    return []
