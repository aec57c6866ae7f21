"""`Coupled` under a process group: 2 gloo ranks, each passing its shard of every batch and of the evaluation
sets, train and evaluate as one process holding everything (DDP, batch norm over the global batch, negatives
from every rank, the reference statistics all-reduced and the accuracies' counts summed)."""
import math

import pytest
import torch
from torch import nn

from clnscl.train import Coupled
from tests.support.conditioning import abs_tolerance, row_error, weight_error
from tests.support.processes import run_gloo_workers

pytestmark = pytest.mark.distributed

SETUP = """
import torch
from torch import nn
from clnscl.train import Coupled

def data():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(24, 9, generator=gen)
    train = [(x[:, None] + 0.3 * torch.randn(24, 2, 9, generator=gen), torch.randint(0, 3, (24,), generator=gen))
             for _ in range(3)]
    ref = (torch.randn(31, 9, generator=gen), torch.randint(0, 3, (31,), generator=gen))
    probe = (torch.randn(26, 9, generator=gen), torch.randint(0, 3, (26,), generator=gen))
    gap = [(torch.randn(14, 2, 9, generator=gen), torch.randint(0, 3, (14,), generator=gen)) for _ in range(3)]
    return train, ref, probe, gap

def model():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(9, 20), nn.BatchNorm1d(20), nn.ReLU())
    return nn.Sequential(enc, nn.Linear(20, 6))

def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)
"""

BODY = SETUP + """
train, ref, probe, gap = data()
coupled = Coupled(model(), ("cl", "nscl", "supcon", "ce"), num_classes=3, temperature=0.5, optimizer=sgd,
                  process_group=dist.group.WORLD)
losses = []
for views, labels in train:
    half = len(views) // world
    losses.append(coupled.step(views[rank * half:(rank + 1) * half], labels[rank * half:(rank + 1) * half]))
part = lambda t: t.tensor_split(world)[rank]
rec = coupled.evaluate([(part(ref[0]), part(ref[1]))], [(part(probe[0]), part(probe[1]))],
                       gap=[g for i, g in enumerate(gap) if i % world == rank], knn_k=3)
state = {n: {k: v.tolist() for k, v in m.state_dict().items()} for n, m in coupled.models.items()}
result = {"losses": losses, "record": rec, "state": state}
"""


def test_two_ranks_with_their_shards_train_and_evaluate_as_one_process_holding_everything(tmp_path):
    ranks = run_gloo_workers(BODY, 2, tmp_path)
    namespace = {}
    exec(SETUP, namespace)
    train, ref, probe, gap = namespace["data"]()
    one = Coupled(namespace["model"](), ("cl", "nscl", "supcon", "ce"), num_classes=3, temperature=0.5,
                  optimizer=namespace["sgd"])
    losses = [one.step(*batch) for batch in train]
    rec = one.evaluate([ref], [probe], gap=gap, knn_k=3)
    assert ranks[0]["record"] == ranks[1]["record"]  # every rank returns the same record
    for got, want in zip(ranks[0]["losses"], losses):
        for n in want:
            assert math.isclose(got[n], want[n], rel_tol=1e-5), n
    # the weights, and the features on the reference set, as far apart as float32 rounding puts them
    two = {n: {k: torch.tensor(v, dtype=one.models[n].state_dict()[k].dtype) for k, v in sd.items()}
           for n, sd in ranks[0]["state"].items()}
    eps_w = max(weight_error(m.state_dict(), two[n]) for n, m in one.models.items())
    assert eps_w < 1e-5
    for n, m in one.models.items():
        for k, v in m.state_dict().items():
            torch.testing.assert_close(two[n][k], v, rtol=1e-4, atol=1e-6, msg=lambda msg: f"{n}.{k}: {msg}")
    with torch.no_grad():
        ours = {n: m.eval()(ref[0]) for n, m in one.models.items()}
        copy = namespace["model"]()
        eps = 0.0
        for n in one.models:
            copy.load_state_dict(two[n])
            eps = max(eps, row_error(ours[n], copy.eval()(ref[0])))
    got = ranks[0]["record"]
    assert set(got) == set(rec)
    for k, v in rec.items():
        tol = abs_tolerance(k, rec, eps, eps_w, len(ref[0]), 0.5)
        if tol is None:
            assert math.isclose(got[k], v, rel_tol=1e-5, abs_tol=1e-7), f"{k}: {got[k]} != {v}"
        else:
            assert abs(got[k] - v) <= tol, f"{k}: {got[k]} != {v} (tolerance {tol})"


def test_an_nn_module_without_parameters_is_refused_clearly():
    with pytest.raises(ValueError, match="model"):
        Coupled(nn.Identity(), ("cl",))
