"""Resumable uniform and exactly stratified batch samplers."""
import io

import pytest
import torch

from clnscl.train.samplers import StratifiedBatches, UniformBatches
from tests.support.seeds import seeded


def _take(sampler, k):
    return [sampler.next_batch().clone() for _ in range(k)]


def test_uniform_batches_epochs_and_determinism():
    s = UniformBatches(103, 10, seeded(0))
    assert s.epoch_length == len(s) == 10
    epoch0 = list(s)
    assert len(epoch0) == 10 and all(b.shape == (10,) and b.dtype == torch.int64 for b in epoch0)
    assert len(set(torch.cat(epoch0).tolist())) == 100  # no repeats within an epoch, last batch dropped
    assert s.epoch == 1 and s.position == 0
    epoch1 = list(s)
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch1))
    t = UniformBatches(103, 10, seeded(0))
    assert all(torch.equal(a, b) for a, b in zip(_take(t, 20), epoch0 + epoch1))
    with pytest.raises(ValueError, match="batch_size"):
        UniformBatches(5, 10, seeded(0))


@pytest.mark.parametrize("make", [
    lambda g: UniformBatches(50, 8, g),
    lambda g: StratifiedBatches(torch.tensor([0] * 30 + [1] * 12 + [2] * 9), 6, g),
], ids=["uniform", "stratified"])
@pytest.mark.parametrize("cut", [0, 3, 6, 7])  # start, mid-epoch, last batch of the epoch, next epoch
def test_samplers_resume_exactly(make, cut):
    ref = make(seeded(11))
    full = _take(ref, 3 * ref.epoch_length)
    run = make(seeded(11))
    _take(run, cut)
    buf = io.BytesIO()
    torch.save(run.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    _take(run, 2)  # the killed run went on a bit; the restored one must not care
    resumed = make(seeded(999))  # a different generator state entirely
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == (state["epoch"], state["position"])
    rest = _take(resumed, len(full) - cut)
    assert all(torch.equal(a, b) for a, b in zip(rest, full[cut:]))


def test_sampler_resume_via_iteration_mid_epoch():
    ref = UniformBatches(40, 4, seeded(5))
    expected = list(ref) + list(ref)
    run = UniformBatches(40, 4, seeded(5))
    it = iter(run)
    for _ in range(4):
        next(it)
    state = run.state_dict()
    resumed = UniformBatches(40, 4, seeded(0))
    resumed.load_state_dict(state)
    got = list(resumed) + list(resumed)  # the rest of epoch 0, then epoch 1
    assert len(got) == 16 and all(torch.equal(a, b) for a, b in zip(got, expected[4:]))


def test_sampler_state_mismatch_is_rejected():
    state = UniformBatches(50, 8, seeded(0)).state_dict()
    with pytest.raises(ValueError, match="n is 50"):
        UniformBatches(60, 8, seeded(0)).load_state_dict(state)
    with pytest.raises(ValueError, match="stratified"):
        StratifiedBatches(torch.arange(4).repeat(10), 8, seeded(0)).load_state_dict(state)


def test_stratified_batches_exact_counts():
    # imbalanced: class 3 is small and gets over-sampled within the epoch
    labels = torch.tensor([0] * 120 + [1] * 90 + [2] * 75 + [3] * 15)
    labels = labels[torch.randperm(labels.numel(), generator=seeded(0))]
    s = StratifiedBatches(labels, 20, seeded(1))
    assert s.epoch_length == 300 // 20 and s.per_class == 5
    seen = {c: [] for c in range(4)}
    for _ in range(2):
        for batch in s:
            assert batch.shape == (20,)
            assert torch.bincount(labels[batch], minlength=4).tolist() == [5, 5, 5, 5]
            assert batch.unique().numel() == 20  # no duplicates within a batch
            for c in range(4):
                seen[c].append(batch[labels[batch] == c])
    # large classes: each sample at most once per epoch; the small one is reused within the epoch
    first_epoch = {c: torch.cat(v[: s.epoch_length]) for c, v in seen.items()}
    for c in range(3):
        assert first_epoch[c].unique().numel() == first_epoch[c].numel() == 75
    assert first_epoch[3].numel() == 75 and first_epoch[3].unique().numel() == 15


def test_stratified_batch_size_errors():
    labels = torch.arange(10).repeat(20)
    with pytest.raises(ValueError, match="batch_size=256"):
        StratifiedBatches(labels, 256, seeded(0))
    with pytest.raises(ValueError, match="batch_size=200 .*class 1 has only 5"):
        StratifiedBatches(torch.tensor([0] * 300 + [1] * 5), 200, seeded(0))


def test_peek_shows_the_next_batch_of_the_epoch_without_drawing():
    labels = torch.arange(40) % 4
    for sampler in (UniformBatches(40, 8, seeded(5)), StratifiedBatches(labels, 8, seeded(5))):
        assert sampler.peek() is None  # nothing drawn yet
        for step in range(2 * sampler.epoch_length):
            generator, state = sampler.generator.get_state(), sampler.state_dict()
            upcoming = sampler.peek()
            assert torch.equal(sampler.generator.get_state(), generator)  # peeking draws nothing
            assert sampler.state_dict().keys() == state.keys()
            assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
                       for a, b in zip(sampler.state_dict().values(), state.values()))
            batch = sampler.next_batch()
            if step % sampler.epoch_length == 0:
                assert upcoming is None  # an epoch's first batch is drawn with the epoch
            else:
                assert torch.equal(upcoming, batch)
        assert sampler.peek() is None  # the epoch is used up
