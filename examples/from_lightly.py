"""Moving a SimCLR loop from lightly to clnscl: the one-line switch, then the native module.

A tiny MLP learns from random vectors seen through two noisy views. The loop is run twice from the same
initial weights and on the same batches: first with `from clnscl.compat.lightly import NTXentLoss` (lightly's
names and defaults, τ = 0.5: only the import changes), then with the native `clnscl.NTXentLoss(temperature=0.5)`
(whose own default is τ = 0.1, so the temperature is passed). Both losses are printed every few steps, and on
one batch their values and gradients are compared; where lightly is installed, its own NTXentLoss is compared
too.

Run it from any directory, on a CPU, in a few seconds:

    python examples/from_lightly.py
"""
import copy

import torch
from torch import nn

import clnscl
from clnscl.compat.lightly import NTXentLoss  # instead of: from lightly.loss import NTXentLoss

STEPS, BATCH, DIM = 60, 128, 32


def views(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views of each row: additive noise, then about a fifth of the features dropped."""
    def one() -> torch.Tensor:
        noisy = x + 0.3 * torch.randn(x.shape, generator=gen)
        return noisy * (torch.rand(x.shape, generator=gen) > 0.2)

    return one(), one()


def train(model: nn.Module, loss_fn: nn.Module, monitor: nn.Module, data: torch.Tensor, name: str) -> list[float]:
    """SimCLR steps on `model` with `loss_fn`; every 15 steps prints it and `monitor` on the same batch."""
    gen = torch.Generator().manual_seed(1)  # the same batches and views for both runs
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(1, STEPS + 1):
        batch = data[torch.randint(0, len(data), (BATCH,), generator=gen)]
        z0, z1 = (model(v) for v in views(batch, gen))
        loss = loss_fn(z0, z1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 1 or step % 15 == 0:
            with torch.no_grad():
                other = monitor(z0, z1).item()
            print(f"  [{name}] step {step:3d}: loss {loss.item():.6f} (the other form on this batch: {other:.6f})")
    return losses


torch.manual_seed(0)
data = torch.randn(1024, DIM)
initial = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 16))

shim = NTXentLoss()  # lightly's defaults: temperature=0.5, no memory bank
native = clnscl.NTXentLoss(temperature=0.5)  # the native default is 0.1: pass lightly's τ

print("1. the one-line switch: clnscl.compat.lightly.NTXentLoss (lightly's defaults, τ = 0.5)")
with_shim = train(copy.deepcopy(initial), shim, native, data, "shim")
print("2. the native module: clnscl.NTXentLoss(temperature=0.5)")
with_native = train(copy.deepcopy(initial), native, shim, data, "native")
print(f"training loss: shim {with_shim[0]:.4f} -> {with_shim[-1]:.4f}, "
      f"native {with_native[0]:.4f} -> {with_native[-1]:.4f}")
print(f"max |difference| between the two runs' loss curves: "
      f"{max(abs(a - b) for a, b in zip(with_shim, with_native)):.3g}")

# One batch, in float64: the two losses and their gradients with respect to the embeddings
gen = torch.Generator().manual_seed(2)
out0, out1 = (torch.randn(BATCH, 16, generator=gen, dtype=torch.float64) for _ in range(2))


def value_and_grads(loss_fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a, b = out0.clone().requires_grad_(), out1.clone().requires_grad_()
    loss = loss_fn(a, b)
    loss.backward()
    return loss.detach(), a.grad, b.grad


ours = value_and_grads(shim)
theirs = value_and_grads(native)
loss_diff = (ours[0] - theirs[0]).abs().item()
grad_diff = max((g - h).abs().max().item() for g, h in zip(ours[1:], theirs[1:]))
print(f"one batch: shim {ours[0].item():.12f}, native {theirs[0].item():.12f}")
print(f"agreement on one batch: |loss difference| = {loss_diff:.3e}, max |gradient difference| = {grad_diff:.3e}")

try:
    from lightly.loss import NTXentLoss as LightlyNTXentLoss
except ImportError:
    print("lightly is not installed: the shim's values are checked against it by tests/compat/test_lightly.py")
else:
    peer = value_and_grads(LightlyNTXentLoss())
    peer_diff = (peer[0] - ours[0]).abs().item()
    peer_grad = max((g - h).abs().max().item() for g, h in zip(ours[1:], peer[1:]))
    print(f"lightly's own NTXentLoss: {peer[0].item():.12f}; "
          f"|difference from the shim| = {peer_diff:.3e}, max |gradient difference| = {peer_grad:.3e}")
