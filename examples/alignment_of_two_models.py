"""How alike are two models' representations? CKA, RSA and the pairwise metrics, layer by layer and streamed.

Two small CNNs of the same architecture, initialised with different seeds, see the same 512 random 3×32×32
images (smooth random patterns, no download). On their penultimate features the example computes
`clnscl.metrics.cka` (linear, cosine and RBF kernels), `clnscl.metrics.rsa` (Pearson on the Euclidean RDM,
and Spearman with its error bound), and `clnscl.metrics.pairwise_alignment` (every pairwise metric from two
passes over the pairs); then `clnscl.metrics.layer_alignment`, every convolution and linear layer of one model
against every one of the other (exact linear CKA on channel-averaged features), drawn as a heatmap into
./alignment_heatmap.png (matplotlib's Agg canvas: no display needed); and last `StreamingAlignment`, which
accumulates the features batch by batch and gives the same linear CKA as `cka` on all of them at once.

Run it from any directory (the PNG is written to the current one), on a CPU, in a few seconds:

    python examples/alignment_of_two_models.py
"""
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clnscl import metrics

N, BATCH = 512, 64


def small_cnn(seed: int) -> nn.Sequential:
    """Three convolution blocks, a 64-d penultimate layer and a 10-way output; initialised from `seed`."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 16, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(32, 64, 3, padding=1)), ("relu3", nn.ReLU()), ("pool3", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(64, 64)), ("relu4", nn.ReLU()),  # the penultimate features: the output of relu4
        ("out", nn.Linear(64, 10)),
    ]))


@torch.no_grad()
def penultimate(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The features before the last layer."""
    return model[:-1](x)


torch.manual_seed(0)
# smooth random images: 8×8 noise upsampled, plus fine noise
images = F.interpolate(torch.randn(N, 3, 8, 8), size=32, mode="bilinear", align_corners=False)
images = images + 0.1 * torch.randn(N, 3, 32, 32)
model_a, model_b = small_cnn(seed=1).eval(), small_cnn(seed=2).eval()
x, y = penultimate(model_a, images), penultimate(model_b, images)
print(f"penultimate features of {N} images: model a {tuple(x.shape)}, model b {tuple(y.shape)}")

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
loader = [images[i : i + BATCH] for i in range(0, N, BATCH)]
layers = (nn.Conv2d, nn.Linear)  # every module of these types, in order
result = metrics.layer_alignment(model_a, model_b, loader, layers, layers, method="exact", kernel="linear",
                                 pool="avg", progress=False)
print(f"  {result.method} {result.kernel} CKA over {result.samples} samples; rows: model a, columns: model b")
print("  " + " " * 6 + "".join(f"{name:>8}" for name in result.names_b))
for name, row in zip(result.names_a, result.cka.tolist()):
    print(f"  {name:>6}" + "".join(f"{v:8.3f}" for v in row))
print(f"  matching layers (the diagonal): {', '.join(f'{v:.3f}' for v in result.cka.diagonal().tolist())}")
png = result.heatmap(Path("alignment_heatmap.png"), title="CKA of two CNNs with different seeds",
                     labels=("model a (seed 1)", "model b (seed 2)"))
print(f"  heatmap written to {png.resolve()}")

print("3. streamed over batches")
stream = metrics.StreamingAlignment()
parts_a, parts_b = [], []
model_a.eval()  # already in eval mode here; a model fresh from training would not be
model_b.eval()
with torch.no_grad():
    for batch in loader:
        fa, fb = model_a[:-1](batch), model_b[:-1](batch)
        stream.update(fa, fb)
        parts_a.append(fa)
        parts_b.append(fb)
streamed = stream.compute()["cka_linear"]
at_once = metrics.cka(torch.cat(parts_a), torch.cat(parts_b))
print(f"  StreamingAlignment over {stream.n} rows in {len(loader)} batches: cka_linear {streamed:.12f}")
print(f"  metrics.cka on the concatenated features:           {at_once:.12f}")
print(f"  streamed vs at once: |difference| = {abs(streamed - at_once):.3e}")
