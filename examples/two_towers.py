"""Two towers, CLIP-style: an image encoder and a text encoder trained with clnscl's two-tower loss.

Random paired data stand in for images and captions: both "modalities" are noisy linear views of a shared
latent vector, of different widths (48 and 24). Two linear encoders map them to a shared 32-d space and are
trained with the native `clnscl.ClipLoss(learnable_scale=True)`, which holds CLIP's learnable logit scale
(initialised to 1/0.07, capped at 100) and normalises the rows inside. The example prints the loss, the
learned scale and the held-out image → text retrieval accuracy as training goes, then compares one batch
with `clnscl.compat.open_clip.ClipLoss` (open_clip's call: normalised features, and the multiplier
logit_scale) and, where open_clip is installed, with open_clip's own ClipLoss.

Run it from any directory, on a CPU, in a few seconds:

    python examples/two_towers.py
"""
import torch
import torch.nn.functional as F
from torch import nn

import clnscl
from clnscl.compat.open_clip import ClipLoss as OpenClipShim

STEPS, BATCH, LATENT, EMBED = 60, 128, 16, 32


def paired(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n (image, text) pairs: two noisy linear views of the same latent vectors."""
    latent = torch.randn(n, LATENT, generator=gen)
    return (latent @ TO_IMAGE + 1.5 * torch.randn(n, 48, generator=gen),
            latent @ TO_TEXT + 1.5 * torch.randn(n, 24, generator=gen))


@torch.no_grad()
def retrieval_accuracy(images: torch.Tensor, texts: torch.Tensor) -> float:
    """The share of images whose most similar text (cosine) is their own caption."""
    a, b = F.normalize(image_tower(images), dim=1), F.normalize(text_tower(texts), dim=1)
    return (a @ b.T).argmax(dim=1).eq(torch.arange(len(a))).float().mean().item()


torch.manual_seed(0)
TO_IMAGE, TO_TEXT = torch.randn(LATENT, 48), torch.randn(LATENT, 24)
gen = torch.Generator().manual_seed(1)
held_out = paired(256, gen)
image_tower, text_tower = nn.Linear(48, EMBED), nn.Linear(24, EMBED)
loss_fn = clnscl.ClipLoss(learnable_scale=True, init_temperature=0.07, max_scale=100.0)
params = [*image_tower.parameters(), *text_tower.parameters(), *loss_fn.parameters()]
opt = torch.optim.Adam(params, lr=3e-3)

print(f"before training: held-out image -> text top-1 accuracy {retrieval_accuracy(*held_out):.3f} "
      f"(chance {1 / len(held_out[0]):.3f})")
for step in range(1, STEPS + 1):
    images, texts = paired(BATCH, gen)
    loss = loss_fn(image_tower(images), text_tower(texts))  # rows normalised inside; the scale is the module's
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 1 or step % 15 == 0:
        print(f"step {step:3d}: loss {loss.item():.4f}, logit scale {loss_fn.logit_scale.exp().item():.2f}, "
              f"held-out top-1 {retrieval_accuracy(*held_out):.3f}")
accuracy = retrieval_accuracy(*held_out)
print(f"after training: held-out image -> text top-1 accuracy {accuracy:.3f}")

# One batch three ways, on the features as an open_clip model returns them: normalised, with the multiplier
images, texts = paired(BATCH, gen)
with torch.no_grad():
    a = F.normalize(image_tower(images).double(), dim=1)  # float64, for a comparison down to rounding
    b = F.normalize(text_tower(texts).double(), dim=1)
    scale = loss_fn.logit_scale.exp().clamp(max=100.0).double()
    native = clnscl.clip_loss(a, b, scale)  # the functional form: (a, b, logit_scale), normalising again is a no-op
    shim = OpenClipShim()(a, b, scale)  # open_clip's call: (image_features, text_features, logit_scale)
print(f"one batch: native clip_loss {native.item():.12f}, compat.open_clip.ClipLoss {shim.item():.12f}")
print(f"agreement on one batch: |native - shim| = {(native - shim).abs().item():.3e}")
try:
    from open_clip.loss import ClipLoss as OpenClipLoss
except ImportError:
    print("open_clip is not installed: the shim's values are checked against it by tests/compat/test_open_clip.py")
else:
    with torch.no_grad():
        peer = OpenClipLoss()(a, b, scale)
    print(f"open_clip's own ClipLoss: {peer.item():.12f}; |difference from the shim| = "
          f"{(peer - shim).abs().item():.3e}")
