"""The feature-extraction helpers stream models into the accumulators exactly as one-shot metrics would."""
import pytest
import torch
from torch import nn

from clnscl import metrics


def _models_and_loader(seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = torch.randn(203, 11, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (203,), generator=gen)
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(11, 17), nn.BatchNorm1d(17), nn.ReLU(), nn.Linear(17, 9))
    b = nn.Sequential(nn.Linear(11, 6), nn.Tanh(), nn.Linear(6, 5))
    a, b = a.double(), b.double()  # float64 throughout: batched and one-shot forwards agree to rounding
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, labels), batch_size=37)
    return a, b, data, loader


def test_align_models_equals_one_shot_metrics_and_restores_train_mode():
    a, b, data, loader = _models_and_loader()
    a.train()
    acc, kept = metrics.align_models(a, b, loader)
    assert kept is None and a.training  # eval mode only while extracting
    a.eval()
    with torch.no_grad():
        fa, fb = a(data), b(data)
    expected = metrics.StreamingAlignment()
    expected.update(fa, fb)
    got, want = acc.compute(), expected.compute()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key
    assert got["cka_linear"] == pytest.approx(metrics.cka(fa, fb), rel=1e-12)


def test_keep_features_are_compact_and_match():
    a, b, data, loader = _models_and_loader(1)
    _, (fa, fb) = metrics.align_models(a, b, loader, keep_features=True, dtype=torch.bfloat16)
    assert fa.dtype == torch.bfloat16 and fa.shape == (203, 9) and fb.shape == (203, 5)
    a.eval()
    with torch.no_grad():
        torch.testing.assert_close(fa.double(), a(data), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(metrics.extract_features(b, loader, dtype=torch.float64), b(data).detach())


def test_empty_loader_is_an_error():
    a, b, _, _ = _models_and_loader()
    with pytest.raises(ValueError, match="loader"):
        metrics.align_models(a, b, [])


def test_streaming_linear_cka_keeps_its_precision_with_a_large_offset(monkeypatch):
    """Sums of shifted rows (and the exact re-shift in merge) keep linear CKA, biased and unbiased, at float64
    precision when the features share an offset of 1000 (raw sums would lose ~1e-4)."""
    from clnscl.metrics import reference, streaming

    monkeypatch.setattr(streaming, "_CHUNK_ROWS", 97)  # several chunks, the shift taken from the first
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1001, 11, generator=gen, dtype=torch.float64)
    w = torch.randn(11, 6, generator=gen, dtype=torch.float64)
    y = x @ w + torch.randn(1001, 6, generator=gen, dtype=torch.float64)
    a, b = metrics.StreamingAlignment(), metrics.StreamingAlignment()
    a.update(x[:400] + 1000, y[:400] - 1000)
    b.update(x[400:] * 1 + 1000, y[400:] - 1000)  # another first chunk, another shift
    got = a.merge(b).compute()
    for unbiased in (False, True):
        want = reference.cka(x, y, "linear", None, unbiased)
        assert got["cka_linear_unbiased" if unbiased else "cka_linear"] == pytest.approx(want, abs=1e-12)
