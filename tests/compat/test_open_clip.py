"""clnscl.compat.open_clip against the installed open_clip: ClipLoss's value and gradients (both towers and a tensor
logit_scale) on every backend, random sizes, scales below and above the kernels' fixed-shift limit, a logit_bias,
output_dict; what the shim refuses. Its distributed local-loss mode is checked in tests/loss/test_distributed.py."""
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss as PeerClipLoss  # a declared test dependency: missing, the tests fail

from clnscl.compat.open_clip import ClipLoss
from tests.support.loss_backends import BACKENDS, DEVICE, io_dtype, skip_unless_runs
from tests.support.seeds import gen_for


@pytest.mark.parametrize("scale,bias", [(1 / 0.07, None), (100.0, -10.0), (3.0, 2.5)], ids=["init", "cap-bias", "low"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_shim_matches_open_clip(backend, scale, bias):
    skip_unless_runs(backend)
    gen = gen_for("open-clip-shim", backend, scale)
    n, d = int(torch.randint(5, 40, (), generator=gen)), int(torch.randint(3, 40, (), generator=gen))
    # features as open_clip's models give them: normalised
    img, txt = (F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1) for _ in range(2))
    dtype = io_dtype(backend)
    mine = [t.to(DEVICE, dtype).detach().clone().requires_grad_() for t in (img, txt)]
    s_mine = torch.tensor(scale, dtype=dtype, device=DEVICE, requires_grad=True)
    b_mine = None if bias is None else torch.tensor(bias, dtype=dtype, device=DEVICE)
    out = ClipLoss(backend=backend)(*mine, s_mine, b_mine, output_dict=True)
    assert set(out) == {"contrastive_loss"}
    out["contrastive_loss"].backward()
    theirs = [t.detach().clone().requires_grad_() for t in (img, txt)]
    s_theirs = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    want = PeerClipLoss()(*theirs, s_theirs, None if bias is None else torch.tensor(bias, dtype=torch.float64))
    want.backward()
    tol = 1e-9 if dtype == torch.float64 else 3e-5 * scale
    torch.testing.assert_close(out["contrastive_loss"].double().cpu(), want, rtol=tol, atol=tol)
    for got, ref in zip((*mine, s_mine), (*theirs, s_theirs)):
        torch.testing.assert_close(got.grad.double().cpu(), ref.grad, rtol=tol, atol=tol * ref.grad.abs().max().item())


def test_shim_takes_a_float_scale_as_open_clip_does():
    gen = gen_for("open-clip-float")
    img, txt = (F.normalize(torch.randn(12, 8, generator=gen, dtype=torch.float64), dim=1) for _ in range(2))
    torch.testing.assert_close(ClipLoss(backend="cpu")(img, txt, 20.0), PeerClipLoss()(img, txt, 20.0))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(use_horovod=True), ValueError, "use_horovod"),
    (dict(world_size=2, rank=1), ValueError, "local_loss"),
    (dict(world_size=2, rank=1, local_loss=True), ValueError, "gather_with_grad"),
    (dict(world_size=2, rank=2, local_loss=True, gather_with_grad=True), ValueError, "rank"),
    (dict(world_size=0), ValueError, "world_size"),
    (dict(rank=1.5), TypeError, "rank"),
    (dict(backend="gpu"), ValueError, "backend"),
])
def test_what_the_shim_cannot_honour_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        ClipLoss(**kwargs)


def test_world_size_without_a_process_group_raises():
    loss = ClipLoss(world_size=2, rank=0, local_loss=True, gather_with_grad=True)
    with pytest.raises(RuntimeError, match="process group"):
        loss(torch.randn(4, 3), torch.randn(4, 3), 10.0)
