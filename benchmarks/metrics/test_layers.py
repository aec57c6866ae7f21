"""Smoke run of the layer-alignment benchmark (`bar_layers.py`): two ResNet-18s on a few random CIFAR-sized
images; on float64 copies, clnscl's minibatch matrix equals pytorch-cka's (before its clamp) and torch-cka's on
the same batches; the float32 runs and the exact matrix of the pooled blocks are finite."""
import pytest
import torch

from benchmarks.metrics.bar_layers import AGREE, check_float64, models_and_data, run


def test_layer_bench_peers_agree_in_float64_and_every_method_runs():
    pytest.importorskip("cka")
    pytest.importorskip("torch_cka")
    agree = check_float64(n=24, batch=8)
    assert set(agree) == {"pytorch-cka", "torch-cka"} and all(d <= AGREE for d in agree.values()), agree
    nets, images = models_and_data(16)
    for method in ("clnscl-minibatch", "pytorch-cka", "torch-cka", "clnscl-exact-avg"):
        cka = run(method, nets, images, batch=8)
        assert cka.shape == (8, 8) and bool(torch.isfinite(cka).all()), method
