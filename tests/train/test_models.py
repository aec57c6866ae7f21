"""The ViT encoders of the coupled trainer: shapes, patch choice, errors, gradients and a short coupled run."""
import math

import pytest
import torch

from clnscl.train.models import build_model

pytest.importorskip("torchvision", reason="ViT encoders need torchvision")

SIZES = {"vit_tiny": 192, "vit_small": 384, "vit_base": 768}
CASES = [(8, 1, 2), (32, 3, 4)]  # (image_size, in_channels, patch)


@pytest.mark.parametrize("image_size,in_channels,patch", CASES)
@pytest.mark.parametrize("name", list(SIZES))
def test_vit_feature_dim_and_patch_embedding(name, image_size, in_channels, patch):
    model = build_model(name, in_channels, 10, 32, 16, image_size=image_size)
    dim = SIZES[name]
    assert model.projector[0].in_features == dim
    assert model.encoder.conv_proj.weight.shape == (dim, in_channels, patch, patch)
    # align._model infers in_channels from the first 4-D tensor under `encoder.` of a checkpoint
    first = next(k for k, v in model.state_dict().items() if k.startswith("encoder.") and v.ndim == 4)
    assert first == "encoder.conv_proj.weight"


@pytest.mark.parametrize("image_size,in_channels,patch", CASES)
def test_vit_tiny_forward_shapes(image_size, in_channels, patch):
    torch.manual_seed(0)
    model = build_model("vit_tiny", in_channels, 10, 32, 16, image_size=image_size).eval()
    with torch.no_grad():
        h, z = model(torch.randn(3, in_channels, image_size, image_size))
    assert h.shape == (3, 192) and z.shape == (3, 16)
    assert torch.isfinite(h).all() and torch.isfinite(z).all()


@pytest.mark.parametrize("image_size,patch", [(16, 4), (64, 4), (96, 16)])
def test_vit_patch_choice(image_size, patch):
    model = build_model("vit_tiny", 3, 10, 32, 16, image_size=image_size)
    assert model.encoder.conv_proj.kernel_size == (patch, patch)


@pytest.mark.parametrize("image_size,patch", [(13, 2), (30, 4), (100, 16)])
def test_vit_image_size_not_divisible_by_patch(image_size, patch):
    with pytest.raises(ValueError, match=rf"image_size {image_size}.*patch size {patch}"):
        build_model("vit_tiny", 3, 10, 32, 16, image_size=image_size)


def test_unknown_model_lists_every_choice():
    with pytest.raises(ValueError) as err:
        build_model("vit_huge", 3, 10, 32, 16)
    for name in ("small_cnn", "resnet18", "resnet50", *SIZES):
        assert name in str(err.value)


def test_vit_backward_reaches_patch_embedding():
    torch.manual_seed(0)
    model = build_model("vit_tiny", 1, 10, 32, 16, image_size=8)
    h, z = model(torch.randn(4, 1, 8, 8))
    (z.pow(2).sum() + h.mean()).backward()
    grad = model.encoder.conv_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_vit_tiny_coupled_run(tmp_path):
    from clnscl.train.config import Config
    from clnscl.train.loop import CoupledTrainer

    # warmup_epochs may not exceed epochs; 5 classes halve the training split the k-NN/NCC probes encode
    cfg = Config(model="vit_tiny", epochs=1, warmup_epochs=0, num_classes=5, batch_size=64, eval_every=1000,
                 objectives=["cl", "nscl"], out=str(tmp_path), device="cpu", reference_size=64)
    records = CoupledTrainer(cfg, tmp_path, log=lambda s: None).run(stop_after=2)
    assert len(records) == 1
    assert math.isfinite(records[0]["cka_cosine/nscl"])
