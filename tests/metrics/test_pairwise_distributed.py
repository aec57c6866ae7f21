"""The pairwise metrics across ranks (issue 22, item 2): rows sharded over 2 and 3 gloo processes in shards of
unequal size; every rank gathers the rows once, takes an equal run of the tile pairs of each pass (cut further
into parts, as for a progress bar), and the sums, extremes and histograms are all-reduced. Every rank must return
the value of one process on all rows (to 1e-9: only the order of the float64 sums differs)."""
import math

import pytest
import torch

from clnscl import metrics
from tests.support.processes import run_gloo_workers

N = 1100  # 5 CPU tiles of 256 rows: 15 tile pairs, dealt out unevenly against 2 and 3 ranks
SHARDS = {2: [0, 333, N], 3: [0, 200, 650, N]}


def data():
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(N, 13, generator=gen, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(13, 7, generator=gen, dtype=torch.float64)) + 0.6 * torch.randn(
        N, 7, generator=gen, dtype=torch.float64)
    return x, y


def values(x, y, group=None, progress=False) -> dict:
    """Every pairwise metric of x, y: RBF CKA (median σ with its bound, a given σ, unbiased), RSA on both RDMs by
    both methods with Spearman's bound, the largest entry of |Σ_X − Σ_Y| and the Gram keys beside them, and all of
    them at once from pairwise_alignment."""
    out = {}
    cka, sig = metrics.cka(x, y, "rbf", return_sigma=True, process_group=group, progress=progress)
    out.update({"cka_rbf": cka, **sig})
    out["cka_rbf_given_unbiased"] = metrics.cka(x, y, "rbf", sigma=2.5, unbiased=True, process_group=group)
    out["cka_linear"] = metrics.cka(x, y, process_group=group)
    for rdm in ("cosine", "euclidean"):
        for method in ("pearson", "spearman"):
            value, bound = metrics.rsa(x, y, rdm, method, return_error=True, process_group=group, progress=progress)
            out[f"rsa_{rdm}_{method}"], out[f"rsa_{rdm}_{method}_bound"] = value, bound
    gap = metrics.similarity_gap(x, y, max_abs=True, process_group=group, progress=progress)
    out.update({f"gap_{k}": v for k, v in gap.items()})
    for rdm in ("cosine", "euclidean"):
        every = metrics.pairwise_alignment(x, y, rdm, process_group=group, progress=progress)
        out.update({f"pairwise_alignment_{rdm}_{k}": v for k, v in every.items()})
    return out


WORKER = """
from clnscl.metrics import pairwise
from tests.metrics.test_pairwise_distributed import SHARDS, data, values
pairwise.PART_PAIRS = 20_000  # several parts per rank and pass
x, y = data()
bounds = SHARDS[world]
mine = slice(bounds[rank], bounds[rank + 1])
result = values(x[mine], y[mine], group=dist.group.WORLD, progress=True)
"""


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_one_process_value_on_unequal_shards(world, tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    results = run_gloo_workers(WORKER, world, tmp_path, timeout=300)
    want = values(*data())
    assert want["rsa_euclidean_spearman_bound"] > 0  # binned ranks: the histograms were all-reduced
    for rank, got in enumerate(results):
        bad = [f"{k}: {got[k]!r} vs {w!r}" for k, w in want.items()
               if not math.isclose(got[k], w, rel_tol=1e-9, abs_tol=1e-12)]
        assert not bad, f"rank {rank} of {world}: " + "; ".join(bad)


WIDTHS = """
import torch
from clnscl import metrics
x = torch.randn(10, 3 + rank, dtype=torch.float64)
try:
    metrics.rsa(x, x, process_group=dist.group.WORLD)
    result = "computed"
except ValueError as exc:
    result = str(exc)
"""


@pytest.mark.distributed
def test_ranks_whose_widths_differ_all_raise(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    results = run_gloo_workers(WIDTHS, 2, tmp_path)
    assert all("feature widths differ [(3, 3), (4, 4)]" in r for r in results), results
