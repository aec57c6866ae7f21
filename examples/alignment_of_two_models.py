"""How alike are two torchvision models' representations? CKA, RSA, a layer heatmap, and the same streamed.

Two torchvision ResNet-18s, `torchvision.models.resnet18(weights=None, num_classes=10)` initialised with seeds 1
and 2 (random weights: nothing is downloaded) and used in eval mode, see the same 512 synthetic 3×32×32 images
(8×8 noise upsampled, plus fine noise; no data set), in 8 batches of 64. The example computes, in four steps:

1. on the penultimate features (the 512-d output of the global average pool, the input of `fc`):
   `clnscl.metrics.cka` with the linear, cosine and RBF kernels, `clnscl.metrics.rsa` (Pearson on the Euclidean
   RDM, and Spearman with its error bound) and `clnscl.metrics.pairwise_alignment` (every pairwise metric from
   two passes over the pairs);
2. `clnscl.metrics.layer_alignment` of six layers of one model against the same six of the other: the stem's
   convolution `conv1`, the four residual stages `layer1`…`layer4` and the 10-way output `fc`, by name, each
   globally average-pooled over its spatial positions (`pool="avg"`: widths 64, 64, 128, 256, 512 and 10; on
   32×32 inputs the stages' maps are 8×8, 4×4, 2×2 and 1×1, so layer4 pooled is the penultimate features and
   its diagonal entry step 1's linear CKA), with `method="exact"` and the linear kernel: the whole data set's
   CKA from float64 Gram sums, no estimate, about 28 MB of statistics. The matrix is printed and drawn as a
   heatmap into ./alignment_heatmap.png (matplotlib's Agg canvas: no display needed);
3. the same for model a against itself (`model_b=None`): every layer has CKA 1 with itself;
4. `StreamingAlignment`, which accumulates the penultimate features batch by batch and gives the same linear
   CKA as `cka` on all of them at once.

It needs torchvision (the package's `vision` extra: pip install -e ".[vision]"). Run it from any
directory (the PNG is written to the current one), on a CPU, in about 10 seconds with one thread:

    python examples/alignment_of_two_models.py
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clnscl import metrics

try:
    from torchvision.models import resnet18
except ImportError:
    sys.exit('This example needs torchvision, which is not installed: pip install -e ".[vision]" from the '
             "repository's root (or pip install torchvision).")

N, BATCH = 512, 64
LAYERS = ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]  # the stem, the four stages, the output


def model(seed: int) -> nn.Module:
    """A ResNet-18 with a 10-way output and random weights drawn from `seed`, in eval mode."""
    torch.manual_seed(seed)
    return resnet18(weights=None, num_classes=10).eval()


@torch.no_grad()
def penultimate(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The (b, 512) features a ResNet feeds its last layer `fc`: its forward pass up to the average pool."""
    body = nn.Sequential(*list(net.children())[:-1])  # conv1, bn1, relu, maxpool, layer1..layer4, avgpool
    return torch.flatten(body(x), 1)


torch.manual_seed(0)
# smooth random images: 8×8 noise upsampled, plus fine noise
images = F.interpolate(torch.randn(N, 3, 8, 8), size=32, mode="bilinear", align_corners=False)
images = images + 0.1 * torch.randn(N, 3, 32, 32)
loader = [images[i : i + BATCH] for i in range(0, N, BATCH)]
model_a, model_b = model(seed=1), model(seed=2)
x = torch.cat([penultimate(model_a, batch) for batch in loader])
y = torch.cat([penultimate(model_b, batch) for batch in loader])
print(f"two torchvision ResNet-18s (seeds 1 and 2), penultimate features of {N} images: "
      f"model a {tuple(x.shape)}, model b {tuple(y.shape)}")

print("1. whole-representation metrics")
print(f"  cka linear  {metrics.cka(x, y):.6f}")
print(f"  cka cosine  {metrics.cka(x, y, kernel='cosine'):.6f}")
print(f"  cka rbf     {metrics.cka(x, y, kernel='rbf'):.6f} (σ: the median pairwise distance of each)")
print(f"  rsa euclidean, pearson   {metrics.rsa(x, y, rdm='euclidean'):.6f}")
rho, bound = metrics.rsa(x, y, rdm="euclidean", method="spearman", return_error=True)
print(f"  rsa euclidean, spearman  {rho:.6f} (error bound {bound:.1e})")
together = metrics.pairwise_alignment(x, y, rdm="euclidean")
print("  pairwise_alignment: " + ", ".join(f"{k} {v:.6g}" for k, v in together.items()))

print("2. layer by layer")
result = metrics.layer_alignment(model_a, model_b, loader, LAYERS, LAYERS, method="exact", kernel="linear",
                                 pool="avg", progress=False)
print(f"  {result.method} {result.kernel} CKA over {result.samples} samples; rows: model a, columns: model b")
print("  " + " " * 6 + "".join(f"{name:>8}" for name in result.names_b))
for name, row in zip(result.names_a, result.cka.tolist()):
    print(f"  {name:>6}" + "".join(f"{v:8.3f}" for v in row))
print(f"  matching layers (the diagonal): {', '.join(f'{v:.3f}' for v in result.cka.diagonal().tolist())}")
png = result.heatmap(Path("alignment_heatmap.png"), title="Linear CKA of two ResNet-18s with different seeds",
                     labels=("model a (seed 1)", "model b (seed 2)"))
print(f"  heatmap written to {png.resolve()}")

print("3. model a against itself")
itself = metrics.layer_alignment(model_a, None, loader, LAYERS, method="exact", kernel="linear", pool="avg",
                                 progress=False)
print("  diagonal: " + ", ".join(f"{v:.12f}" for v in itself.cka.diagonal().tolist()))

print("4. streamed over batches")
stream = metrics.StreamingAlignment()
parts_a, parts_b = [], []
for batch in loader:  # both models are in eval mode (a model fresh from training would need .eval())
    fa, fb = penultimate(model_a, batch), penultimate(model_b, batch)
    stream.update(fa, fb)
    parts_a.append(fa)
    parts_b.append(fb)
streamed = stream.compute()["cka_linear"]
at_once = metrics.cka(torch.cat(parts_a), torch.cat(parts_b))
print(f"  StreamingAlignment over {stream.n} rows in {len(loader)} batches: cka_linear {streamed:.12f}")
print(f"  metrics.cka on the concatenated features:           {at_once:.12f}")
print(f"  streamed vs at once: |difference| = {abs(streamed - at_once):.3e}")
