"""Poisson-bootstrap intervals of StreamingAlignment (issue 21, item 6): every replica holds the statistics of the
rows counted w_i ~ Poisson(1) times (checked against the rows repeated), merge and the all-reduce carry the
replicas, the memory budget refuses with the numbers, and nominal 90 % intervals from N = 2,000 samples cover the
population value (from 10^6 samples) in close to 90 % of independent draws."""
import math

import pytest
import torch

from clnscl.metrics import StreamingAlignment
from clnscl.metrics.streaming import _augmented, _batch_stats
from tests.support.processes import run_gloo_workers

KEYS = ("cka_linear", "cka_cosine", "cka_linear_unbiased", "cka_cosine_unbiased", "rsa_pearson", "gap_relative")


def _rows(n, p, q, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=gen, dtype=torch.float64) + 2.0
    y = torch.tanh(x @ torch.randn(p, q, generator=gen, dtype=torch.float64)) + 0.5 * torch.randn(
        n, q, generator=gen, dtype=torch.float64)
    return x, y


def _weights(seed, replicas, n):
    """The weights an accumulator seeded `seed` draws for its first n rows (given as one batch)."""
    return torch.poisson(torch.ones(replicas, n, dtype=torch.float64), generator=torch.Generator().manual_seed(seed))


def _resampled(x, y, w):
    """The metrics of the rows repeated w_i times: what a bootstrap replica stands for."""
    acc = StreamingAlignment()
    counts = w.long()
    acc.update(x.repeat_interleave(counts, 0), y.repeat_interleave(counts, 0))
    return acc.compute()


@pytest.mark.parametrize("p,q", [(7, 7), (5, 9), (70, 70)])  # p = q keeps the difference sums; 70²: the wide path
def test_weighted_sums_equal_the_sums_of_repeated_rows(p, q):
    x, y = _rows(40, p, q, 1)
    w = _weights(3, 4, 40)
    for differences in (False, True):
        stacked = _batch_stats(_augmented(x), [_augmented(y)], differences=differences, w=w)[0]
        for r in range(4):
            counts = w[r].long()
            repeated = [_augmented(t.repeat_interleave(counts, 0)) for t in (x, y)]
            want = _batch_stats(repeated[0], repeated[1:], differences)[0]
            for key, value in want.items():
                torch.testing.assert_close(stacked[key][r], value, rtol=1e-12, atol=1e-9, msg=key)


@pytest.mark.parametrize("p,q", [(6, 6), (4, 11)])
def test_every_replica_is_the_metric_of_the_resampled_rows(p, q):
    x, y = _rows(300, p, q, 2)
    acc = StreamingAlignment(bootstrap=5, seed=11)
    acc.update(x, y)
    values = acc.replica_values()
    w = _weights(11, 5, 300)
    for r in range(5):
        want = _resampled(x, y, w[r])
        for key in KEYS:
            assert values[key][r].item() == pytest.approx(want[key], rel=1e-9, abs=1e-12), (key, r)
    plain = StreamingAlignment()
    plain.update(x, y)
    assert acc.compute() == plain.compute()  # the statistics themselves untouched


def test_merge_carries_the_replicas_and_refuses_shared_seeds():
    x, y = _rows(300, 6, 6, 3)
    a, b = StreamingAlignment(bootstrap=4, seed=1), StreamingAlignment(bootstrap=4, seed=2)
    a.update(x[:120], y[:120])
    b.update(x[120:] * 3 - 1, y[120:])  # other offsets: merge moves b's sums to a's shift
    merged = StreamingAlignment(bootstrap=4, seed=9).merge(a).merge(b)
    xs, ys = torch.cat([x[:120], x[120:] * 3 - 1]), y
    w = torch.cat([_weights(1, 4, 120), _weights(2, 4, 180)], dim=1)
    values = merged.replica_values()
    for r in range(4):
        want = _resampled(xs, ys, w[r])
        for key in KEYS:
            assert values[key][r].item() == pytest.approx(want[key], rel=1e-9, abs=1e-12), (key, r)
    same = StreamingAlignment(bootstrap=4, seed=1)
    same.update(x[120:], y[120:])
    with pytest.raises(ValueError, match="seed=1.*different seed"):
        StreamingAlignment(bootstrap=4, seed=1).merge(a).merge(same)
    with pytest.raises(ValueError, match="bootstrap replicas"):
        StreamingAlignment(bootstrap=3, seed=5).merge(a)


def test_the_budget_refuses_with_the_numbers_before_allocating():
    one = StreamingAlignment(bootstrap=1)
    one.update(*_rows(3, 512, 512, 4))
    per = sum(v.numel() * 8 for stats in one._replicas for v in stats.values())
    assert StreamingAlignment.replica_bytes(512, 512) == per  # 16.1 MiB
    acc = StreamingAlignment(bootstrap=100, seed=0, budget_gib=1.0)
    x, y = _rows(10, 512, 512, 4)
    with pytest.raises(ValueError, match=r"bootstrap=100 replicas need 1\.57 GiB \(16\.1 MiB each at p=512, q=512\), "
                                         r"above budget_gib=1\.0; use fewer replicas \(at most 63\)"):
        acc.update(x, y)
    assert acc.n == 0 and acc._replicas is None
    StreamingAlignment(bootstrap=63, seed=0, budget_gib=1.0).update(x[:2], y[:2])  # 63 fit
    wide = StreamingAlignment(bootstrap=1)
    wide.update(*_rows(3, 40, 9, 4))
    assert StreamingAlignment.replica_bytes(40, 9) == sum(v.numel() * 8 for d in wide._replicas for v in d.values())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="bootstrap"):
        StreamingAlignment(bootstrap=-1)
    with pytest.raises(TypeError, match="bootstrap"):
        StreamingAlignment(bootstrap=2.0)
    with pytest.raises(ValueError, match="budget_gib"):
        StreamingAlignment(bootstrap=2, budget_gib=0)
    with pytest.raises(RuntimeError, match="bootstrap=R"):
        StreamingAlignment().interval()
    acc = StreamingAlignment(bootstrap=3)
    with pytest.raises(RuntimeError, match="bootstrap=R"):
        acc.interval()
    acc.update(*_rows(20, 3, 3, 5))
    with pytest.raises(ValueError, match="level"):
        acc.interval(level=1.0)
    with pytest.raises(ValueError, match="unknown"):
        acc.interval(keys=["cka"])
    with pytest.raises(ValueError, match=r"compute: unknown keys \['cka'\]"):
        acc.compute(keys=iter(["cka_linear", "cka"]))
    assert acc.compute(keys=iter(["cka_linear"]))["cka_linear"] == acc.compute()["cka_linear"]
    with pytest.raises(ValueError, match="q"):
        StreamingAlignment.replica_bytes(4, 0)
    with pytest.raises(TypeError, match="p"):
        StreamingAlignment.replica_bytes(4.0, 2)
    with pytest.raises(ValueError, match='"n"'):
        StreamingAlignment.from_sums({}, {}, (torch.zeros(3), torch.zeros(3)))
    with pytest.raises(ValueError, match="shift"):
        StreamingAlignment.from_sums({"n": 1}, {"n": 1}, (torch.zeros(3),))


def test_an_undefined_replica_gives_an_undefined_interval():
    acc = StreamingAlignment(bootstrap=50, seed=0)
    acc.update(*_rows(4, 3, 3, 6))  # 4 rows: some replicas hold fewer than 4, the unbiased CKA undefined there
    assert all(math.isnan(v) for v in acc.interval(0.9)["cka_linear_unbiased"])
    acc = StreamingAlignment(bootstrap=50, seed=0)
    acc.update(*_rows(60, 3, 3, 6))
    for key, (low, high) in acc.interval(0.9).items():
        assert math.isfinite(low) and low < high, key


WORKER = """
from tests.metrics.test_bootstrap import _rows
from clnscl.metrics import StreamingAlignment
x, y = _rows(200, 5, 5, 7)
rows = [slice(0, 80), slice(80, 200)][rank]
acc = StreamingAlignment(bootstrap=6, seed=int(world_seed) + rank)
acc.update(x[rows], y[rows] + rank)
acc.all_reduce()
result = {k: v.tolist() for k, v in acc.replica_values().items()}
"""


@pytest.mark.distributed
def test_all_reduce_carries_the_replicas(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    results = run_gloo_workers("world_seed = 10\n" + WORKER, 2, tmp_path)
    x, y = _rows(200, 5, 5, 7)
    a, b = StreamingAlignment(bootstrap=6, seed=10), StreamingAlignment(bootstrap=6, seed=11)
    a.update(x[:80], y[:80])
    b.update(x[80:], y[80:] + 1)
    want = a.merge(b).replica_values()
    for res in results:
        for key in KEYS:
            torch.testing.assert_close(torch.tensor(res[key], dtype=torch.float64), want[key], rtol=1e-9, atol=1e-12)


@pytest.mark.distributed
def test_all_reduce_refuses_ranks_that_share_a_seed(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    body = WORKER.replace("seed=int(world_seed) + rank", "seed=3").replace(
        "acc.all_reduce()\nresult = {k: v.tolist() for k, v in acc.replica_values().items()}",
        "try:\n    acc.all_reduce()\n    result = 'reduced'\nexcept ValueError as exc:\n    result = str(exc)")
    results = run_gloo_workers(body, 2, tmp_path)
    assert all("share bootstrap seeds [3, 3]" in r for r in results)


def test_nominal_90_percent_intervals_cover_the_population_value_about_90_percent_of_the_time():
    """200 independent draws of N = 2,000 rows, 200 replicas each; the population values from 10^6 rows. With the
    true coverage 0.9 the count of 200 is 180 ± 4.2 (binomial SD): the band 165..193 is about ±3.5 SD; the draws are
    seeded, so the test is deterministic, and a wrong replica (no weights: zero width; weights shared by all
    replicas; the variance of a sample of N/2) falls far outside it."""
    p, q, n, draws, replicas = 4, 4, 2000, 200, 200
    gen = torch.Generator().manual_seed(2026)
    scale = torch.linspace(0.3, 2.0, p, dtype=torch.float64)
    mix = torch.randn(p, q, generator=gen, dtype=torch.float64) / p**0.5

    def draw(rows):
        x = torch.randn(rows, p, generator=gen, dtype=torch.float64) * scale
        return x, torch.tanh(x @ mix) + 0.7 * torch.randn(rows, q, generator=gen, dtype=torch.float64)

    population = StreamingAlignment()
    for _ in range(10):
        population.update(*draw(100_000))
    truth = population.compute()
    keys = ("cka_linear", "cka_cosine", "rsa_pearson")
    covered = dict.fromkeys(keys, 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (4 × 4) sums: threads only wait on each other, the more so beside other jobs
    try:
        for d in range(draws):
            acc = StreamingAlignment(bootstrap=replicas, seed=d)
            acc.update(*draw(n))
            for key, (low, high) in acc.interval(0.9, keys=keys).items():
                covered[key] += low <= truth[key] <= high
    finally:
        torch.set_num_threads(threads)
    for key in keys:
        assert 165 <= covered[key] <= 193, f"{key}: covered in {covered[key]} of {draws} draws"


def test_compare_is_a_paired_bootstrap_of_the_difference():
    from clnscl.metrics import compare

    gen = torch.Generator().manual_seed(8)
    anchor = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    a = anchor + 0.3 * torch.randn(400, 6, generator=gen, dtype=torch.float64)
    b = anchor @ torch.randn(6, 5, generator=gen, dtype=torch.float64) + torch.randn(400, 5, generator=gen,
                                                                                      dtype=torch.float64)
    out = compare(anchor, a, b, metric="cka_linear", bootstrap=6, seed=4, level=0.9)
    direct = [StreamingAlignment(), StreamingAlignment()]
    direct[0].update(anchor, a)
    direct[1].update(anchor, b)
    assert out["a"] == direct[0].compute()["cka_linear"] and out["b"] == direct[1].compute()["cka_linear"]
    w = _weights(4, 6, 400)
    diffs = torch.tensor([_resampled(anchor, a, w[r])["cka_linear"] - _resampled(anchor, b, w[r])["cka_linear"]
                          for r in range(6)], dtype=torch.float64)  # one resample of the rows for both models
    want = torch.quantile(diffs, torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
    assert out["interval"] == pytest.approx(want, rel=1e-9)
    assert out["fraction"] == float((diffs > 0).double().mean())
    same = compare(anchor, a, a.numpy(), bootstrap=20)  # numpy taken; a model against itself differs by 0
    assert same["difference"] == 0 and same["interval"] == (0.0, 0.0) and same["fraction"] == 0.0
    with pytest.raises(ValueError, match="metric"):
        compare(anchor, a, b, metric="cka")
    with pytest.raises(ValueError, match="rows"):
        compare(anchor, a, b[:10])
