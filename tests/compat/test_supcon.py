"""clnscl.compat.supcon.SupConLoss against an independent float64 re-implementation of SupContrast's published
formula (its code is not packaged): every contrast mode, labels / mask / neither, V = 1, 2, 3, features with
more than three dims, base_temperature ≠ temperature, on every backend; values and gradients to 1e-6."""
import pytest
import torch
import torch.nn.functional as F

from clnscl.compat.supcon import SupConLoss
from tests.support.loss_backends import BACKENDS, DEVICE, io_dtype, skip_unless_runs
from tests.support.seeds import gen_for


def supcontrast_formula(features, labels=None, mask=None, temperature=0.07, contrast_mode="all",
                        base_temperature=0.07):
    """Khosla et al.'s loss as their reference code states it (float64, without its +1e-9 inside the log)."""
    b, v = features.shape[:2]
    f = features.reshape(b, v, -1)
    if mask is None:
        mask = torch.eye(b) if labels is None else (labels[:, None] == labels[None, :]).double()
    contrast = torch.cat(torch.unbind(f, dim=1), dim=0)
    anchor, n_anchor = (f[:, 0], 1) if contrast_mode == "one" else (contrast, v)
    logits = anchor @ contrast.T / temperature
    mask = mask.double().repeat(n_anchor, v)
    not_self = torch.ones_like(mask).scatter(1, torch.arange(b * n_anchor).view(-1, 1), 0)
    mask = mask * not_self
    log_prob = logits - torch.logsumexp(logits.masked_fill(not_self == 0, float("-inf")), dim=1, keepdim=True)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-(temperature / base_temperature) * mean_log_prob_pos).mean()


# V = 1 has positives only through labels or a mask, and its 'one' mode is 'all' (its refusals are below)
CASES = [(shape, mode, given) for shape in [(12, 2, 7), (9, 3, 2, 3)] for mode in ("all", "one")
         for given in ("labels", "mask", "neither")] + [((16, 1, 5), "all", "labels"), ((16, 1, 5), "all", "mask")]


@pytest.mark.parametrize("shape,mode,given", CASES, ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else c)
@pytest.mark.parametrize("backend", BACKENDS)
def test_shim_matches_supcontrast(backend, shape, mode, given):
    skip_unless_runs(backend)
    gen = gen_for("supcontrast", backend, shape, mode, given)
    f = F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64).flatten(2), dim=-1).view(shape)
    labels = torch.arange(shape[0]) % 4  # every class has at least two samples
    kw = dict(temperature=0.1, contrast_mode=mode, base_temperature=0.07)
    call = {"labels": dict(labels=labels), "mask": dict(mask=(labels[:, None] == labels[None, :]).float()),
            "neither": {}}[given]
    dtype = io_dtype(backend)
    ft = f.to(DEVICE, dtype).detach().clone().requires_grad_()
    loss = SupConLoss(**kw, backend=backend)(ft, **{k: t.to(DEVICE) for k, t in call.items()})
    loss.backward()
    f64 = f.detach().clone().requires_grad_()
    want = supcontrast_formula(f64, **call, **kw)
    want.backward()
    tol = 1e-6 if dtype == torch.float64 else 5e-5
    torch.testing.assert_close(loss.double().cpu(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(ft.grad.double().cpu(), f64.grad, rtol=tol, atol=tol * f64.grad.abs().max().item())


def test_the_default_temperatures_give_the_plain_supcon_loss():
    """With base_temperature = temperature (the defaults) the shim is clnscl's supcon without normalisation."""
    import clnscl

    gen = gen_for("supcontrast-defaults")
    f = torch.randn(10, 2, 6, generator=gen, dtype=torch.float64)
    y = torch.arange(10) % 3
    want = clnscl.contrastive_loss(f, y, objective="supcon", temperature=0.07, normalize=False, backend="reference")
    torch.testing.assert_close(SupConLoss(backend="reference")(f, y), want)


@pytest.mark.parametrize("call,match", [
    (dict(features=torch.randn(4, 8)), "3 dimensions"),
    (dict(labels=torch.tensor([0, 1, 0, 1]), mask=torch.eye(4)), "both"),
    (dict(mask=torch.tensor([[1.0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), "class equality"),
    (dict(mask=torch.eye(3)), "mask"),
    (dict(features=torch.randn(4, 1, 8)), "no positive"),
    (dict(features=torch.randn(4, 1, 8), labels=torch.tensor([0, 0, 1, 2])), "no positive"),
    (dict(labels=torch.tensor([0, 1, 0])), "labels"),
], ids=["2d", "labels-and-mask", "asymmetric-mask", "mask-shape", "V1-unsupervised", "singleton", "label-count"])
def test_what_the_shim_cannot_honour_raises(call, match):
    features = call.pop("features", torch.randn(4, 2, 8))
    with pytest.raises(ValueError, match=match):
        SupConLoss(backend="reference")(features, **call)


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError, match="contrast_mode"):
        SupConLoss(contrast_mode="two")
    with pytest.raises(ValueError, match="base_temperature"):
        SupConLoss(base_temperature=0.0)
