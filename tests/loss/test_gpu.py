"""GPU-only checks of the loss (skipped without a CUDA device; run by scripts/gpu_check.sh on an H200): the CUDA
C++ kernels against the float64 reference, bf16 within a few × PyTorch's own bf16 error, and row indices past
2^31 (int64 offsets) for the CUDA and Triton backends."""
import zlib

import pytest
import torch
import torch.nn.functional as F

import clnscl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


CASES = [("cl", False), ("cl", True), ("nscl", False), ("nscl", True), ("supcon", False), ("supcon", True)]


def _batch(b, v, d, classes, seed, device="cuda"):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(b, v, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (b,), generator=gen)
    return z.to(device), y.to(device)


def _loss_and_grad(z, y, backend, **kw):
    z = z.clone().requires_grad_()
    loss = clnscl.contrastive_loss(z, y, backend=backend, **kw)
    loss.backward()
    return loss.detach().double(), z.grad.double()


@pytest.mark.parametrize("objective,decoupled", CASES)
@pytest.mark.parametrize("temperature", [0.1, 0.01])
def test_cuda_backend_fp32_matches_float64_reference(objective, decoupled, temperature):
    z, y = _batch(301, 3, 45, 7, seed=zlib.crc32(f'{objective}{decoupled}'.encode()))
    kw = dict(objective=objective, decoupled=decoupled, temperature=temperature)
    ref_loss, ref_grad = _loss_and_grad(z, y, "reference", **kw)
    loss, grad = _loss_and_grad(z.float(), y, "cuda", **kw)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4 * ref_grad.abs().max().item())


def _plain_torch_loss_and_grad(z, y, temperature):
    """NSCL written in plain PyTorch and run entirely in z's dtype: PyTorch's own error at that precision."""
    z = z.clone().requires_grad_()
    b, v, d = z.shape
    x = F.normalize(z.reshape(b * v, d), dim=1)
    s = (x @ x.T) / temperature
    inst = torch.arange(b, device=z.device).repeat_interleave(v)
    cls = y.repeat_interleave(v)
    pos = (inst[:, None] == inst[None, :]) & ~torch.eye(b * v, dtype=torch.bool, device=z.device)
    denom = pos | (cls[:, None] != cls[None, :])  # NSCL: Pos ∪ Neg
    lse = torch.logsumexp(s.masked_fill(~denom, float("-inf")), dim=1)
    loss = (lse - (s * pos).sum(dim=1) / pos.sum(dim=1)).mean()
    loss.backward()
    return loss.detach().double(), z.grad.double()


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_error_is_a_small_multiple_of_torchs(backend, dtype):
    z, y = _batch(1000, 2, 128, 10, seed=5)
    exact_loss, exact_grad = _loss_and_grad(z, y, "reference", objective="nscl", temperature=0.1)
    torch_loss, torch_grad = _plain_torch_loss_and_grad(z.to(dtype), y, 0.1)
    loss, grad = _loss_and_grad(z.to(dtype), y, backend, objective="nscl", temperature=0.1)
    assert loss.isfinite() and grad.isfinite().all()
    assert (loss - exact_loss).abs().item() <= 4 * (torch_loss - exact_loss).abs().item() + 1e-4
    assert (grad - exact_grad).abs().max().item() <= 4 * (torch_grad - exact_grad).abs().max().item()


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_rows_past_int32_offsets(backend):
    """N·d > 2^31 elements of the row matrix: offsets must be int64. Checked on a sample of rows."""
    n, d = (1 << 31) // 128 + 4099, 128  # 16,781,315 rows × 128 > 2^31 elements (bf16: 4.3 GB)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = F.normalize(torch.randn(n, d, device="cuda", generator=gen), dim=1).to(torch.bfloat16)
    inst = torch.arange(n, device="cuda") // 2
    cls = inst % 1000
    rows = torch.tensor([0, 1, n // 2, n - 2, n - 1], device="cuda")
    k = q  # columns: all rows; the sampled rows are checked against a direct computation
    args = (q[rows], k, inst[rows], cls[rows], inst, cls, 0, torch.tensor(10.0), 5, True)
    if backend == "cuda":
        lse = torch.ops.clnscl.masked_lse(*args)
    else:
        import clnscl.loss.triton.ops  # noqa: F401  (defines torch.ops.clnscl_triton)

        lse = torch.ops.clnscl_triton.masked_lse(*args)
    s = (q[rows].float() @ k.float().T) * 10.0
    same_inst = inst[rows][:, None] == inst[None, :]
    keep = ~(cls[rows][:, None] == cls[None, :]) | same_inst  # include = POS | NEG
    keep &= rows[:, None] != torch.arange(n, device="cuda")[None, :]
    expected = torch.logsumexp(s.masked_fill(~keep, float("-inf")), dim=1)
    torch.testing.assert_close(lse, expected, rtol=1e-3, atol=1e-3)


def test_compile_fullgraph_through_the_cuda_op():
    z, y = _batch(257, 2, 64, 5, seed=9)
    z = z.float().requires_grad_()

    def f(z, y):
        return clnscl.contrastive_loss(z, y, objective="supcon", backend="cuda")

    eager = f(z, y)
    (g_eager,) = torch.autograd.grad(eager, z)
    compiled = torch.compile(f, fullgraph=True)(z, y)
    (g_compiled,) = torch.autograd.grad(compiled, z)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-6)
