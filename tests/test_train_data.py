"""Trainer data: digits loading, seeded stratified split and class subsets, generator-driven augmentations,
exactly stratified and resumable samplers."""
import io

import pytest
import torch

from clnscl.train.data import (
    Augment,
    StratifiedBatches,
    UniformBatches,
    class_subset,
    class_subset_indices,
    filter_classes,
    load_digits_dataset,
    split,
)


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return load_digits_dataset()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ data
def test_digits_shape_range_labels(digits):
    x, y = digits
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert sorted(y.unique().tolist()) == list(range(10))


def test_split_is_stratified_disjoint_and_seeded(digits):
    x, y = digits
    n = y.numel()
    tagged = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 8, 8).clone()  # image = its index
    tx, ty, rx, ry = split(tagged, y, reference_fraction=0.2, seed=0)
    ti, ri = tx[:, 0, 0, 0].long(), rx[:, 0, 0, 0].long()
    assert set(ti.tolist()).isdisjoint(ri.tolist()) and len(ti) + len(ri) == n
    assert torch.equal(ty, y[ti]) and torch.equal(ry, y[ri])
    for c in range(10):
        n_c = int((y == c).sum())
        assert int((ry == c).sum()) == round(0.2 * n_c)
    again = split(tagged, y, 0.2, seed=0)
    assert torch.equal(again[2], rx)
    other = split(tagged, y, 0.2, seed=1)
    assert not torch.equal(other[2], rx)
    # a tiny imbalanced label set: every class with >= 2 samples lands on both sides
    small = torch.tensor([0] * 9 + [1] * 2 + [2])
    _, sty, _, sry = split(torch.zeros(12, 1, 2, 2), small, 0.2, seed=0)
    assert sorted(sry.tolist()) == [0, 0, 1] and sorted(sty.tolist()) == [0] * 7 + [1, 2]
    with pytest.raises(ValueError, match="reference_fraction"):
        split(tagged, y, 1.0)


def test_class_subset_seeded_and_remapped(digits):
    x, y = digits
    a = class_subset(y, 4, seed=0)
    assert a == sorted(a) and len(a) == 4 and len(set(a)) == 4 and all(isinstance(c, int) for c in a)
    assert class_subset(y, 4, seed=0) == a
    assert any(class_subset(y, 4, seed=s) != a for s in range(1, 6))
    assert class_subset(y, None, seed=0) == list(range(10))
    with pytest.raises(ValueError, match="num_classes"):
        class_subset(y, 11, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        class_subset(y, 0, seed=0)
    fx, fy = filter_classes(x, y, a)
    keep = torch.isin(y, torch.tensor(a))
    assert torch.equal(fx, x[keep])
    assert torch.equal(fy, torch.tensor([a.index(int(c)) for c in y[keep]]))
    idx, remapped = class_subset_indices(y, a)
    assert torch.equal(idx, keep.nonzero().flatten()) and torch.equal(remapped, fy)


# ---------------------------------------------------------------------------------------- augmentation
def test_augment_deterministic_given_generator_state(digits):
    x = digits[0][:64]
    aug = Augment()
    g = _gen(7)
    state = g.get_state()
    v1 = aug(x, g)
    v2 = aug(x, g)  # same generator, advanced: a fresh view
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(aug(x, g2), v1) and torch.equal(aug(x, g2), v2)
    assert not torch.equal(v1, v2)
    assert not torch.equal(aug(x, _gen(8)), v1)
    # the consumption depends only on the batch shape and on whether there is noise
    g3, g4 = _gen(1), _gen(1)
    Augment()(x, g3)
    Augment(rotation=0, jitter_p=0, noise_std=0.5, crop_scale=(1, 1))(x, g4)
    assert torch.equal(g3.get_state(), g4.get_state())


@pytest.mark.parametrize("noise_std", [0.0, 0.05])
def test_augment_shards_are_rows_of_the_whole_batch(digits, noise_std):
    """Under torchrun each process transforms its shard of the global batch: the same pixels as the
    corresponding rows of the whole batch, and the generator ends in the same state on every process."""
    x = digits[0][:50]
    aug = Augment(noise_std=noise_std, hflip_p=0.5)
    g = _gen(3)
    whole = aug.views(x, g)
    for offset, size in ((0, 25), (25, 25), (7, 13), (50, 0)):
        gs = _gen(3)
        part = aug.views(x[offset : offset + size], gs, batch_size=50, offset=offset)
        for v, w in zip(part, whole):
            torch.testing.assert_close(v, w[offset : offset + size], rtol=0, atol=1e-6)
        assert torch.equal(gs.get_state(), g.get_state())
    with pytest.raises(ValueError, match="batch_size=50"):
        aug(x[:10], _gen(0), batch_size=50, offset=45)


def test_augment_shape_range_and_per_sample_randomness(digits):
    x = digits[0][:1].expand(32, 1, 8, 8).contiguous()  # the same image 32 times
    out = Augment()(x, _gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    flat = out.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(32) * 1e9).min() > 1e-4  # every sample got its own parameters
    assert (out - x).abs().mean() > 0.02  # it does change the images
    wide = torch.rand(5, 3, 12, 20, generator=_gen(1))
    assert Augment(hflip_p=0.5, padding_mode="reflection")(wide, _gen(2)).shape == (5, 3, 12, 20)
    assert Augment()(wide.double(), _gen(2)).dtype == torch.float64


def test_augment_geometry_conventions():
    x = torch.rand(6, 2, 8, 8, generator=_gen(3))
    still = dict(crop_scale=(1, 1), crop_ratio=(1, 1), rotation=0, jitter_p=0, noise_std=0)
    assert torch.allclose(Augment(**still)(x, _gen(0)), x, atol=1e-6)  # full window, no rotation: identity
    assert torch.allclose(Augment(**still, hflip_p=1.0)(x, _gen(0)), x.flip(-1), atol=1e-6)
    # a quarter-area window is a 2x zoom: a constant image stays constant inside
    const = torch.full((4, 1, 8, 8), 0.5)
    assert torch.allclose(Augment(crop_scale=(0.25, 0.25), crop_ratio=(1, 1), rotation=0, jitter_p=0,
                                  noise_std=0)(const, _gen(0)), const, atol=1e-6)


def test_augment_rotation_is_rigid_on_non_square_images():
    # a blob 10 pixels right of the centre of a 33x65 image: a full-window rotation keeps it 10 pixels away
    h, w = 33, 65
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    cx, cy = (w - 1) / 2, (h - 1) / 2
    x = torch.exp(-((xx - cx - 10) ** 2 + (yy - cy) ** 2) / 4).expand(16, 1, h, w).contiguous()
    out = Augment(crop_scale=(1, 1), crop_ratio=(1, 1), rotation=60, jitter_p=0, noise_std=0)(x, _gen(3))
    mass = out[:, 0].sum(dim=(1, 2))
    px = (out[:, 0] * xx).sum(dim=(1, 2)) / mass - cx
    py = (out[:, 0] * yy).sum(dim=(1, 2)) / mass - cy
    assert torch.allclose(torch.hypot(px, py), torch.full((16,), 10.0), atol=0.1)
    angles = torch.rad2deg(torch.atan2(py, px)).abs()
    assert angles.max() <= 60.5 and angles.max() > 20  # rotated, within the range


def test_augment_input_errors():
    aug = Augment()
    with pytest.raises(TypeError, match="Generator"):
        aug(torch.rand(2, 1, 8, 8), None)
    with pytest.raises(ValueError, match="B, C, H, W"):
        aug(torch.rand(1, 8, 8), _gen(0))
    with pytest.raises(TypeError, match="floating"):
        aug(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), _gen(0))
    with pytest.raises(ValueError, match="crop_scale"):
        Augment(crop_scale=(0.0, 1.0))


# --------------------------------------------------------------------------------------------- samplers
def _take(sampler, k):
    return [sampler.next_batch().clone() for _ in range(k)]


def test_uniform_batches_epochs_and_determinism():
    s = UniformBatches(103, 10, _gen(0))
    assert s.epoch_length == len(s) == 10
    epoch0 = list(s)
    assert len(epoch0) == 10 and all(b.shape == (10,) and b.dtype == torch.int64 for b in epoch0)
    assert len(set(torch.cat(epoch0).tolist())) == 100  # no repeats within an epoch, last batch dropped
    assert s.epoch == 1 and s.position == 0
    epoch1 = list(s)
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch1))
    t = UniformBatches(103, 10, _gen(0))
    assert all(torch.equal(a, b) for a, b in zip(_take(t, 20), epoch0 + epoch1))
    with pytest.raises(ValueError, match="batch_size"):
        UniformBatches(5, 10, _gen(0))


@pytest.mark.parametrize("make", [
    lambda g: UniformBatches(50, 8, g),
    lambda g: StratifiedBatches(torch.tensor([0] * 30 + [1] * 12 + [2] * 9), 6, g),
], ids=["uniform", "stratified"])
@pytest.mark.parametrize("cut", [0, 3, 6, 7])  # start, mid-epoch, last batch of the epoch, next epoch
def test_samplers_resume_exactly(make, cut):
    ref = make(_gen(11))
    full = _take(ref, 3 * ref.epoch_length)
    run = make(_gen(11))
    _take(run, cut)
    buf = io.BytesIO()
    torch.save(run.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    _take(run, 2)  # the killed run went on a bit; the restored one must not care
    resumed = make(_gen(999))  # a different generator state entirely
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == (state["epoch"], state["position"])
    rest = _take(resumed, len(full) - cut)
    assert all(torch.equal(a, b) for a, b in zip(rest, full[cut:]))


def test_sampler_resume_via_iteration_mid_epoch():
    ref = UniformBatches(40, 4, _gen(5))
    expected = list(ref) + list(ref)
    run = UniformBatches(40, 4, _gen(5))
    it = iter(run)
    for _ in range(4):
        next(it)
    state = run.state_dict()
    resumed = UniformBatches(40, 4, _gen(0))
    resumed.load_state_dict(state)
    got = list(resumed) + list(resumed)  # the rest of epoch 0, then epoch 1
    assert len(got) == 16 and all(torch.equal(a, b) for a, b in zip(got, expected[4:]))


def test_sampler_state_mismatch_is_rejected():
    state = UniformBatches(50, 8, _gen(0)).state_dict()
    with pytest.raises(ValueError, match="n is 50"):
        UniformBatches(60, 8, _gen(0)).load_state_dict(state)
    with pytest.raises(ValueError, match="stratified"):
        StratifiedBatches(torch.arange(4).repeat(10), 8, _gen(0)).load_state_dict(state)


def test_stratified_batches_exact_counts():
    # imbalanced: class 3 is small and gets over-sampled within the epoch
    labels = torch.tensor([0] * 120 + [1] * 90 + [2] * 75 + [3] * 15)
    labels = labels[torch.randperm(labels.numel(), generator=_gen(0))]
    s = StratifiedBatches(labels, 20, _gen(1))
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
        StratifiedBatches(labels, 256, _gen(0))
    with pytest.raises(ValueError, match="batch_size=200 .*class 1 has only 5"):
        StratifiedBatches(torch.tensor([0] * 300 + [1] * 5), 200, _gen(0))


def test_peek_shows_the_next_batch_of_the_epoch_without_drawing():
    labels = torch.arange(40) % 4
    for sampler in (UniformBatches(40, 8, _gen(5)), StratifiedBatches(labels, 8, _gen(5))):
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
