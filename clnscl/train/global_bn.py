"""Batch normalisation over the global batch of a process group, on any device (PyTorch's SyncBatchNorm
runs on GPUs only; this one also on CPU processes over gloo).

In training mode, per channel c over the N rows of all ranks (every spatial position a row):
μ_c = Σ x / N and σ²_c = Σ (x − μ_c)² / N, each sum an all-reduce whose backward all-reduces the gradient, so
the gradients are those of one process holding the whole batch (under DDP's averaging). Running statistics
take σ² · N / (N − 1), as torch's BatchNorm does. In eval mode it is plain batch norm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..collectives import all_reduce_sum


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 group=None, **kw) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True, **kw)
        self.group = group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm: expected input with at least 2 dimensions, got {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        local = torch.cat([xf.sum(dims), xf.new_tensor([x.numel() / x.shape[1]])])
        total = all_reduce_sum(local, self.group)
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce_sum(centred.square().sum(dims), self.group) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_global_batchnorm(module: nn.Module, group=None) -> nn.Module:
    """`module` with every BatchNorm layer (1-d, 2-d, 3-d, with running statistics) replaced by a
    GlobalBatchNorm holding its parameters and running statistics (the state dict keys stay the same)."""
    if (isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm)
            and module.track_running_stats):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, group,
                              device=module.running_mean.device, dtype=module.running_mean.dtype)
        with torch.no_grad():
            if module.affine:
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, convert_global_batchnorm(child, group))
    return module
