"""Optimisers and the learning-rate schedule of the trainer: SGD with momentum, AdamW or LARS, with weight decay
on weight matrices and kernels only, and a linear warm-up followed by a cosine decay, per step.

LARS (You et al., 2017) as used by SimCLR: SGD with momentum whose step for each weight tensor is scaled by the
trust ratio η·‖w‖ / (‖∇w‖ + λ‖w‖). Parameter groups with `lars_exclude=True` (biases and norm layers) take
plain SGD steps without weight decay or trust ratio.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if not group["lars_exclude"]:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    trust = torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm,
                                        torch.ones_like(w_norm))
                    update = update * trust
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = update.clone()
                else:
                    buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(cfg, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """cfg's optimiser over `params` at cfg.scaled_lr(); weight decay on tensors of 2+ dimensions."""
    params = list(params)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]  # biases and norm layers
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = cfg.scaled_lr()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))
    groups[1]["lars_exclude"] = True  # LARS: no trust ratio for biases and norm layers
    return LARS(groups, lr=lr, momentum=cfg.momentum)


def schedule(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `total_steps`, per step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
