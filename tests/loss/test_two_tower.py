"""The two-tower (CLIP) loss: the installed open_clip's ClipLoss (cross-entropy of the scaled logits both ways)
and an anchor-by-anchor float64 oracle of the cross-modal loss table, on every backend, values and gradients (a, b and
a tensor logit_scale); one-directional InfoNCE with Ba ≠ Bb; the refusals; the module's learnable scale.
The distributed local-rows × global-columns mode is in test_distributed.py."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss as OpenClipLoss  # a declared test dependency: missing, the tests fail

import clnscl
from tests.support.loss_backends import BACKENDS, DEVICE, io_dtype, skip_unless_runs
from tests.support.seeds import gen_for


def randn(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def open_clip(a, b, scale):
    """open_clip's ClipLoss on the features normalised (as its models do before the loss)."""
    return OpenClipLoss()(F.normalize(a, dim=1), F.normalize(b, dim=1), scale)


def oracle_direction(a, b, scale, targets, labels, key_labels, objective, decoupled):
    """Rows of one direction from the sets: Pos = {t_i}, Same = other columns of a_i's class, Neg = the rest."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    rows, counted = [], 0
    for i in range(a.shape[0]):
        t = int(targets[i])
        same = [j for j in range(b.shape[0]) if j != t and labels is not None and int(key_labels[j]) == int(labels[i])]
        neg = [j for j in range(b.shape[0]) if j != t and j not in same]
        if objective == "cl":
            d, p = ([*same, *neg] if decoupled else list(range(b.shape[0]))), [t]
        elif objective == "nscl":
            d, p = (neg if decoupled else [t, *neg]), [t]
        else:  # supcon
            d, p = (neg if decoupled else list(range(b.shape[0]))), [t, *same]
        if not d:
            rows.append(a.new_zeros(()))
            continue
        counted += 1
        s = scale * (b @ a[i])
        rows.append(torch.logsumexp(s[d], 0) - s[p].mean())
    return torch.stack(rows).sum() / max(counted, 1)


@pytest.mark.parametrize("value", [14.0, 60.0], ids=["fixed-shift", "running-max"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_matches_open_clip(backend, value):
    skip_unless_runs(backend)
    gen = gen_for("clip", backend, value)
    a, b = randn(29, 19, gen=gen), randn(29, 19, gen=gen)
    dtype = io_dtype(backend)
    at, bt = (x.to(DEVICE, dtype).detach().clone().requires_grad_() for x in (a, b))
    scale = torch.tensor(value, dtype=dtype, device=DEVICE, requires_grad=True)
    loss = clnscl.clip_loss(at, bt, scale, backend=backend)
    loss.backward()
    a64, b64 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    s64 = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    want = open_clip(a64, b64, s64)
    want.backward()
    tol = 1e-10 if dtype == torch.float64 else 2e-6 * value
    torch.testing.assert_close(loss.double().cpu(), want, rtol=tol, atol=tol)
    for got, ref in ((at.grad, a64.grad), (bt.grad, b64.grad), (scale.grad, s64.grad)):
        torch.testing.assert_close(got.double().cpu(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("objective,decoupled", [("cl", True), ("nscl", False), ("nscl", True), ("supcon", False),
                                                 ("supcon", True)])
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_supervised_cross_modal_variants_match_the_oracle(backend, objective, decoupled, symmetric):
    skip_unless_runs(backend)
    gen = gen_for("clip-sup", backend, objective, decoupled, symmetric)
    n, d = 23, 10
    a, b = randn(n, d, gen=gen), randn(n, d, gen=gen)
    labels = torch.randint(0, 4, (n,), generator=gen)
    targets = torch.randperm(n, generator=gen)
    key_labels = torch.empty_like(labels).index_copy_(0, targets, labels)
    dtype = io_dtype(backend)
    at, bt = (x.to(DEVICE, dtype).detach().clone().requires_grad_() for x in (a, b))
    loss = clnscl.clip_loss(at, bt, 5.0, targets=targets.to(DEVICE), labels=labels.to(DEVICE), objective=objective,
                            decoupled=decoupled, symmetric=symmetric, backend=backend)
    loss.backward()
    a64, b64 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    want = oracle_direction(a64, b64, 5.0, targets, labels, key_labels, objective, decoupled)
    if symmetric:
        inverse = torch.empty_like(targets).index_copy_(0, targets, torch.arange(n))
        want = 0.5 * (want + oracle_direction(b64, a64, 5.0, inverse, key_labels, labels, objective, decoupled))
    want.backward()
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(loss.double().cpu(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(at.grad.double().cpu(), a64.grad, rtol=tol, atol=tol * a64.grad.abs().max().item())
    torch.testing.assert_close(bt.grad.double().cpu(), b64.grad, rtol=tol, atol=tol * b64.grad.abs().max().item())


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_one_directional_infonce_with_more_keys_than_queries(backend):
    """Bq = 7 queries, Bk = 40 keys (MoCo-like): each query's positive is a given key, the rest negatives."""
    gen = gen_for("infonce", backend)
    q, k = randn(7, 12, gen=gen), randn(40, 12, gen=gen)
    targets = torch.randperm(40, generator=gen)[:7]
    rows = clnscl.clip_loss(q, k, 1 / 0.07, targets=targets, symmetric=False, reduction="none", backend=backend)
    logits = (F.normalize(q, dim=1) @ F.normalize(k, dim=1).T) / 0.07
    torch.testing.assert_close(rows, F.cross_entropy(logits, targets, reduction="none"), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_a_queue_of_keys_joins_the_a_to_b_denominator(backend):
    """MoCo: queries against their keys and a queue of past keys (no gradient): CE over [keys, queue]."""
    skip_unless_runs(backend)
    gen = gen_for("queue", backend)
    q, k, queue = randn(7, 12, gen=gen), randn(7, 12, gen=gen), randn(30, 12, gen=gen)
    dtype = io_dtype(backend)
    qt = q.to(DEVICE, dtype).detach().clone().requires_grad_()
    rows = clnscl.clip_loss(qt, k.to(DEVICE, dtype), 1 / 0.2, symmetric=False, reduction="none", backend=backend,
                            negatives=queue.to(DEVICE, dtype))
    q64 = q.detach().clone().requires_grad_()
    logits = F.normalize(q64, dim=1) @ F.normalize(torch.cat((k, queue)), dim=1).T / 0.2
    want = F.cross_entropy(logits, torch.arange(7), reduction="none")
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(rows.double().cpu(), want, rtol=tol, atol=tol)
    rows.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(qt.grad.double().cpu(), q64.grad, rtol=tol, atol=tol * q64.grad.abs().max().item())


def test_the_bias_cancels_and_gets_a_zero_gradient():
    gen = gen_for("bias")
    a, b = randn(9, 6, gen=gen), randn(9, 6, gen=gen)
    bias = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    loss = clnscl.clip_loss(a, b, 10.0, bias, backend="reference")
    loss.backward()
    torch.testing.assert_close(loss, open_clip(a, b, 10.0))
    assert bias.grad is not None and bias.grad.item() == 0.0


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(b=torch.randn(6, 8)), ValueError, "targets"),
    (dict(targets=torch.tensor([0, 0, 1, 2, 3])), ValueError, "distinct"),
    (dict(targets=torch.tensor([0, 1, 2, 3, 9])), ValueError, "targets"),
    (dict(b=torch.randn(6, 8), targets=torch.arange(5)), ValueError, "symmetric"),
    (dict(objective="nscl"), ValueError, "labels"),
    (dict(logit_scale=-1.0), ValueError, "logit_scale"),
    (dict(logit_scale=torch.tensor([1.0, 2.0])), ValueError, "logit_scale"),
    (dict(b=torch.randn(5, 7)), ValueError, "feature dimension"),
    (dict(reduction="avg"), ValueError, "reduction"),
], ids=["ba-ne-bb", "repeated", "out-of-range", "symmetric-unpaired", "no-labels", "neg-scale", "two-scales",
        "wrong-d", "reduction"])
def test_bad_two_tower_input_is_refused(kwargs, error, match):
    args = dict(a=torch.randn(5, 8), b=torch.randn(5, 8), logit_scale=10.0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        clnscl.clip_loss(args.pop("a"), args.pop("b"), args.pop("logit_scale"), **args)


def test_module_with_a_learnable_scale():
    gen = gen_for("clip-module")
    a, b = torch.randn(11, 8, generator=gen), torch.randn(11, 8, generator=gen)
    crit = clnscl.ClipLoss(learnable_scale=True, init_temperature=0.07, backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a step with a learnable scale warns about nothing
        loss = crit(a, b)
        loss.backward()
    s = torch.tensor(1 / 0.07, requires_grad=True)
    clnscl.clip_loss(a, b, s, backend="cpu").backward()
    torch.testing.assert_close(crit.logit_scale.grad, s.grad * s.detach(), rtol=1e-5, atol=1e-7)  # d/d log s
    with pytest.raises(ValueError, match="logit_scale"):
        crit(a, b, logit_scale=10.0)
    with pytest.raises(ValueError, match="logit_scale"):
        clnscl.ClipLoss()(a, b)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_clip_loss_with_a_learnable_scale_under_torch_compile_fullgraph(backend):
    skip_unless_runs(backend)
    torch._dynamo.reset()
    gen = gen_for("clip-compile", backend)
    a, b = torch.randn(13, 10, generator=gen).to(DEVICE), torch.randn(13, 10, generator=gen).to(DEVICE)
    grads = []
    for compiled in (False, True):
        log_scale = torch.nn.Parameter(torch.tensor(2.5, device=DEVICE))
        at = a.clone().requires_grad_()

        def f(x, y, s):
            return clnscl.clip_loss(x, y, s.exp(), backend=backend)

        fn = torch.compile(f, fullgraph=True, backend="aot_eager") if compiled else f
        fn(at, b, log_scale).backward()
        grads.append((log_scale.grad.clone(), at.grad.clone()))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
