"""Moving SupContrast code to clnscl: its SupConLoss through the shim, the native module, and stacked views.

SupContrast's loss takes features (B, V, d), the V views of each of B samples (normalised by the model, not by
the loss), with labels (B,). The shim `clnscl.compat.supcon.SupConLoss` keeps its defaults (τ = 0.07,
base_temperature = 0.07) and uses the features as given; the native `clnscl.SupConLoss(temperature=0.07,
normalize=False)` computes the same at those defaults (the factor τ/τ_base is 1). The example prints both, their
difference, the factor at another τ, and what the native module says when given two views stacked as one
(2B, d) tensor, then the conversion its message suggests.

Run it from any directory, on a CPU, in a few seconds:

    python examples/from_supcontrast.py
"""
import torch
import torch.nn.functional as F
from torch import nn

import clnscl
from clnscl.compat.supcon import SupConLoss  # instead of: from losses import SupConLoss

B, V, CLASSES = 64, 2, 4

torch.manual_seed(0)
encoder = nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 32))
labels = torch.randint(0, CLASSES, (B,))
centres = torch.randn(CLASSES, 24)
samples = centres[labels] + 0.5 * torch.randn(B, 24)
x = samples[:, None] + 0.2 * torch.randn(B, V, 24)  # V noisy views of each sample
features = F.normalize(encoder(x), dim=-1)  # (B, V, d), normalised in the model as SupContrast's examples do
print(f"features {tuple(features.shape)}, labels {tuple(labels.shape)} over {CLASSES} classes")

shim = SupConLoss()  # SupContrast's defaults: temperature=0.07, contrast_mode='all', base_temperature=0.07
native = clnscl.SupConLoss(temperature=0.07, normalize=False)  # the native default τ is 0.1, and it normalises
theirs, ours = shim(features, labels), native(features, labels)
grads = [torch.autograd.grad(loss, encoder[0].weight, retain_graph=True)[0] for loss in (theirs, ours)]
print(f"shim (SupContrast's SupConLoss): {theirs.item():.8f}")
print(f"native clnscl.SupConLoss:        {ours.item():.8f}")
print(f"agreement at the defaults (τ = base_temperature): |loss difference| = {(theirs - ours).abs().item():.3e}, "
      f"max |gradient difference| = {(grads[0] - grads[1]).abs().max().item():.3e}")

# Away from the defaults SupContrast multiplies by τ/τ_base; the native loss has no such factor
tau = 0.1
ratio = SupConLoss(temperature=tau)(features, labels) / clnscl.SupConLoss(temperature=tau, normalize=False)(
    features, labels)
print(f"at τ = {tau}: shim / native = {ratio.item():.6f} (τ/τ_base = {tau / 0.07:.6f})")

# Code written for (2B, d) batches: the two views stacked, rows i and B + i the views of sample i
z_stacked = torch.cat([features[:, 0], features[:, 1]])  # (2B, d)
labels_stacked = labels.repeat(2)  # (2B,)
try:
    native(z_stacked, labels_stacked)
except ValueError as error:
    print(f"native loss(z_stacked, labels_stacked) with z {tuple(z_stacked.shape)} raises ValueError:")
    print(f"  {error}")
converted = native(torch.stack(z_stacked.chunk(2), 1), labels_stacked.chunk(2)[0])
print(f"after the conversion, loss(torch.stack(z.chunk(2), 1), labels.chunk(2)[0]) = {converted.item():.8f} "
      f"(|difference from the (B, V, d) call| = {(converted - ours).abs().item():.3e})")
