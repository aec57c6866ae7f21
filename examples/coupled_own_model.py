"""Couple your own model on your own data: CL against NSCL, SupCon and CE under shared randomness.

An MLP with dropout on vectors drawn around 5 class centres; each sample's two views add noise and drop
features. Runs on the CPU in well under a minute, into runs/own_model: metrics.jsonl, checkpoint.pt, the
report's figures and summary.md.
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clnscl.train import Coupled, fit


class Noisy(Dataset):
    """Vectors around 5 class centres; an item is (2 augmented views, label)."""

    def __init__(self, n, seed):
        gen = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 5, (n,), generator=gen)
        centres = 0.4 * torch.randn(5, 48, generator=torch.Generator().manual_seed(0))
        self.x = centres[self.y] + torch.randn(n, 48, generator=gen)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        views = self.x[i] + 0.3 * torch.randn(2, 48)
        return views * (torch.rand(2, 48) > 0.2), self.y[i]


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(48, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 32)

    def forward(self, x):
        h = self.body(x)
        return h, self.head(h)  # (representation, embedding the losses see)


torch.manual_seed(0)
train = DataLoader(Noisy(2048, seed=1), batch_size=128, shuffle=True, drop_last=True)
test = Noisy(500, seed=2)
reference = [(test.x[:250], test.y[:250])]  # the fixed set the models are compared on
probe = [(test.x[250:], test.y[250:])]  # the labelled bank of the NCC / k-NN accuracies
gap = [next(iter(DataLoader(test, batch_size=250)))]  # fixed views on which the CL − NSCL loss gap is measured
coupled = Coupled(Encoder(), ("cl", "nscl", "supcon", "ce"), num_classes=5, temperature=0.5,
                  optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
records = fit(coupled, train, reference, probe=probe, gap=gap, out="runs/own_model", epochs=10, eval_every=40,
              overwrite=True, progress=False)
last = records[-1]
print({k: round(last[k], 3) for k in ("cka_cosine/nscl", "cka_cosine/supcon", "cka_cosine/ce", "knn/cl", "loss_gap")})
