"""`clnscl.train.Coupled` on a model and data that are not the package's: an MLP with dropout on random vectors.

Every step is checked against the same step written by hand with `clnscl.contrastive_loss` and the same
optimiser; the evaluation against `clnscl.metrics` on features computed here."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clnscl import contrastive_loss, metrics, theory
from clnscl.train import Coupled, NonFiniteError

D_IN, CLASSES, TAU = 11, 3, 0.4


class MLP(nn.Module):
    """h = dropout(relu(W x)), z = P h: forward returns (h, z)."""

    def __init__(self, p: float = 0.3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(D_IN, 24), nn.ReLU(), nn.Dropout(p))
        self.projector = nn.Linear(24, 7)

    def forward(self, x):
        h = self.encoder(x)
        return h, self.projector(h)


def _batch(gen, b=12, v=2):
    x = torch.randn(b, D_IN, generator=gen)
    return x[:, None] + 0.2 * torch.randn(b, v, D_IN, generator=gen), torch.randint(0, CLASSES, (b,), generator=gen)


def _sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)


def _halving(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)


def _hand_head(d: int, seed: int) -> nn.Linear:
    """The documented "ce" head: nn.Linear(d, classes) with weight then bias ~ U(±1/√d) from a generator seeded with
    torch.initial_seed() at construction."""
    head = nn.Linear(d, CLASSES)
    gen = torch.Generator().manual_seed(seed)
    b = 1 / math.sqrt(d)
    with torch.no_grad():
        head.weight.copy_(torch.rand(CLASSES, d, generator=gen) * 2 * b - b)
        head.bias.copy_(torch.rand(CLASSES, generator=gen) * 2 * b - b)
    return head


@pytest.mark.parametrize("grad_clip", [None, 0.5])
def test_a_coupled_step_equals_the_step_written_by_hand_for_every_objective(grad_clip):
    torch.manual_seed(3)
    model = MLP()
    seed = torch.initial_seed()
    objectives = ("cl", "nscl", "supcon", "ce")
    coupled = Coupled(model, objectives, num_classes=CLASSES, temperature=TAU, optimizer=_sgd, scheduler=_halving,
                      grad_clip=grad_clip)
    hand = {n: copy.deepcopy(model) for n in objectives}
    head = _hand_head(7, seed)
    opts = {n: _sgd([*m.parameters(), *(head.parameters() if n == "ce" else ())]) for n, m in hand.items()}
    scheds = {n: _halving(o) for n, o in opts.items()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        views, labels = _batch(gen)
        state = torch.get_rng_state()
        want = {}
        for n, m in hand.items():
            torch.set_rng_state(state)
            h, z = m(views.flatten(0, 1))
            z = z.view(len(views), 2, -1)
            if n == "ce":
                loss = F.cross_entropy(head(z).flatten(0, 1), labels.repeat_interleave(2))
            else:
                loss = contrastive_loss(z, labels, objective=n, temperature=TAU)
            opts[n].zero_grad()
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_([p for g in opts[n].param_groups for p in g["params"]], grad_clip)
            want[n] = loss.item()
        for n in objectives:
            opts[n].step()
            scheds[n].step()
        after = torch.get_rng_state()
        torch.set_rng_state(state)
        got = coupled.step(views, labels)
        assert torch.equal(torch.get_rng_state(), after)  # the random stream goes on as by hand
        for n in objectives:
            assert math.isclose(got[n], want[n], rel_tol=1e-6), n
    for n in objectives:
        for (k, a), b in zip(coupled.models[n].state_dict().items(), hand[n].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m: f"{n}.{k}: {m}")
    torch.testing.assert_close(coupled.heads["ce"].weight, head.weight, rtol=1e-6, atol=1e-7)


def test_the_dropout_masks_agree_across_the_models_and_differ_between_steps():
    torch.manual_seed(0)
    coupled = Coupled(MLP(p=0.5), ("cl", "nscl", "supcon"), temperature=TAU)
    masks = {}
    for name, m in coupled.models.items():
        m.encoder[2].register_forward_hook(lambda mod, inp, out, name=name: masks.setdefault(name, []).append(
            (out == 0, inp[0] != 0)))  # dropped, where the input was not already 0
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        coupled.step(*_batch(gen))
    (drop0, seen0), (drop1, seen1) = masks["cl"]
    assert (drop0 & seen0).any() and not torch.equal(drop0 & seen0 & seen1, drop1 & seen0 & seen1)  # drew anew
    for name in ("nscl", "supcon"):
        for (a, seen_a), (b, seen_b) in zip(masks["cl"], masks[name]):
            both = seen_a & seen_b
            assert both.float().mean() > 0.3 and torch.equal(a & both, b & both), name


def test_evaluate_equals_the_metrics_on_the_same_features():
    torch.manual_seed(5)
    coupled = Coupled(MLP(), ("cl", "nscl", "ce"), num_classes=CLASSES, temperature=TAU)
    gen = torch.Generator().manual_seed(4)
    for _ in range(4):
        coupled.step(*_batch(gen))
    ref_x, ref_y = torch.randn(37, D_IN, generator=gen), torch.randint(0, CLASSES, (37,), generator=gen)
    probe_x, probe_y = torch.randn(29, D_IN, generator=gen), torch.randint(0, CLASSES, (29,), generator=gen)
    reference = [(ref_x[:20], ref_y[:20]), (ref_x[20:], ref_y[20:])]  # two batches, odd sizes
    probe = [(probe_x, probe_y)]
    gap = [_batch(gen, b=15)]
    rng = torch.get_rng_state()
    rec = coupled.evaluate(reference, probe, gap=gap, knn_k=5)
    assert torch.equal(torch.get_rng_state(), rng)  # evaluation leaves the training stream alone
    assert all(m.training for m in coupled.models.values())
    with torch.no_grad():
        for m in coupled.models.values():
            m.eval()
        feats = {n: [t.double() for t in m(ref_x)] for n, m in coupled.models.items()}
        bank = {n: m(probe_x)[0] for n, m in coupled.models.items()}
        views, labels = gap[0]
        z = coupled.models["cl"](views.flatten(0, 1))[1].view(15, 2, -1)
        gap_want = (contrastive_loss(z, labels, objective="cl", temperature=TAU)
                    - contrastive_loss(z, labels, objective="nscl", temperature=TAU)).item()
    h_cl, z_cl = feats["cl"]
    for name in ("nscl", "ce"):
        h, z = feats[name]
        for prefix, a, b in (("", z_cl, z), ("h/", h_cl, h)):
            assert math.isclose(rec[f"{prefix}cka_cosine/{name}"], metrics.cka(a, b, kernel="cosine"), rel_tol=1e-9)
            assert math.isclose(rec[f"{prefix}cka_linear/{name}"], metrics.cka(a, b), rel_tol=1e-9)
            assert math.isclose(rec[f"{prefix}rsa_pearson/{name}"], metrics.rsa(a, b), rel_tol=1e-9)
            assert math.isclose(rec[f"{prefix}gap_relative/{name}"], metrics.similarity_gap(a, b)["relative"],
                                rel_tol=1e-7)
        want = metrics.weight_divergence(
            {k: p for k, p in coupled.models["cl"].named_parameters() if p.ndim > 1},
            {k: p for k, p in coupled.models[name].named_parameters() if p.ndim > 1})["mean"]
        assert math.isclose(rec[f"weight_div/{name}"], want, rel_tol=1e-9)
    for name in ("cl", "nscl", "ce"):
        h = feats[name][0].float()
        assert rec[f"nccc/{name}"] == metrics.nccc_accuracy(bank[name], probe_y, h, ref_y)
        assert rec[f"knn/{name}"] == metrics.knn_accuracy(bank[name], probe_y, h, ref_y, k=5)
    assert math.isclose(rec["loss_gap"], gap_want, rel_tol=1e-6)
    assert math.isclose(rec["loss_gap_bound"], metrics.loss_gap_bound(labels, TAU), rel_tol=1e-12)
    terms = theory.coupling_ratios(z_cl, feats["nscl"][1])
    for key in ("rho", "r", "k_norm", "rdm_scale"):
        assert math.isclose(rec[f"theory/{key}"], terms[key], rel_tol=1e-7), key
    assert math.isclose(rec["theory/gap"], terms["sigma_gap"], rel_tol=1e-7)
    assert rec["theory/eta_sum"] == pytest.approx(4 * 0.1) and rec["theory/gap_trivial"] == 2 * 37


def test_a_coupled_continued_from_its_state_dict_equals_the_uninterrupted_one():
    torch.manual_seed(7)
    model = MLP()
    first = Coupled(model, ("nscl", "cl", "ce"), num_classes=CLASSES, optimizer=_sgd, scheduler=_halving)
    gen = torch.Generator().manual_seed(8)
    batches = [_batch(gen) for _ in range(4)]
    for b in batches[:2]:
        first.step(*b)
    state = copy.deepcopy(first.state_dict())
    torch.manual_seed(123)  # another stream, and another model: the state brings everything back
    second = Coupled(MLP(), ("nscl", "cl", "ce"), num_classes=CLASSES, optimizer=_sgd, scheduler=_halving)
    second.load_state_dict(state)
    torch.set_rng_state(state["rng"]["cpu"])
    a = [first.step(*b) for b in batches[2:]]
    torch.set_rng_state(state["rng"]["cpu"])
    second.load_state_dict(state)
    b = [second.step(*b) for b in batches[2:]]
    assert a == b
    for n in first.names:
        for x, y in zip(first.models[n].state_dict().values(), second.models[n].state_dict().values()):
            assert torch.equal(x, y)
    assert second.steps == 4 and second.last_lr == first.last_lr


def test_a_model_that_returns_z_alone_records_no_h_keys():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(D_IN, 9), nn.Tanh(), nn.Linear(9, 5))
    coupled = Coupled(net, ("cl",), temperature=TAU)
    gen = torch.Generator().manual_seed(0)
    views, _ = _batch(gen)
    loss = coupled.step(views)  # "cl" alone needs no labels
    assert set(loss) == {"cl"}
    coupled = Coupled(net, ("cl", "supcon"))
    coupled.step(*_batch(gen))
    rec = coupled.evaluate([torch.randn(10, D_IN, generator=gen)])
    assert "cka_cosine/supcon" in rec and not any(k.startswith("h/") for k in rec)


def test_a_nonfinite_loss_names_the_step_and_objective_and_no_model_takes_it():
    torch.manual_seed(2)
    coupled = Coupled(MLP(), ("cl", "nscl"), temperature=TAU)
    gen = torch.Generator().manual_seed(0)
    coupled.step(*_batch(gen))
    before = {n: copy.deepcopy(m.state_dict()) for n, m in coupled.models.items()}
    views, labels = _batch(gen)
    views[0, 0, 0] = math.nan
    with pytest.raises(NonFiniteError, match=r"step 2: the cl model's loss is not finite \(its last finite loss: "):
        coupled.step(views, labels)
    coupled.step(views, labels, on_nonfinite="skip")
    assert coupled.steps == 2 and coupled.skipped == 1
    for n, m in coupled.models.items():
        assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), before[n].values()))


@pytest.mark.parametrize("kwargs, match", [
    ({"objectives": ("cl", "ce")}, "num_classes"),
    ({"objectives": ("ce", "cl"), "num_classes": 3}, "anchor"),
    ({"objectives": ("cl", "dcl")}, "unknown"),
    ({"objectives": ("cl", "cl")}, "at most once"),
    ({"objectives": ("cl",), "temperature": 0.0}, "temperature"),
    ({"objectives": ("cl",), "grad_clip": -1.0}, "grad_clip"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Coupled(MLP(), **kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"optimizer": torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)}, TypeError, "optimizer must be a callable"),
    ({"scheduler": 3}, TypeError, "scheduler must be a callable"),
    ({"class_priors": [0.5, -0.1, 0.6]}, ValueError, "class_priors"),
    ({"class_priors": [0.0, 0.0]}, ValueError, "class_priors"),
    ({"class_priors": []}, ValueError, "class_priors"),
])
def test_bad_factories_and_priors_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        Coupled(MLP(), ("cl", "nscl"), **kwargs)


def test_bad_evaluation_options_and_states_name_the_argument():
    coupled = Coupled(MLP(), ("cl", "nscl"))
    reference = [(torch.randn(8, D_IN), torch.arange(8) % 2)]
    with pytest.raises(ValueError, match="knn_k"):
        coupled.evaluate(reference, knn_k=0)
    with pytest.raises(ValueError, match="theory_delta"):
        coupled.evaluate(reference, theory_delta=0.0)
    state = coupled.state_dict()
    del state["rng"], state["theory"]
    with pytest.raises(ValueError, match="missing rng, theory"):
        coupled.load_state_dict(state)
    with pytest.raises(ValueError, match="not a Coupled.state_dict"):
        coupled.load_state_dict([1, 2])


def test_bad_batches_name_the_argument():
    coupled = Coupled(MLP(), ("cl", "nscl"))
    with pytest.raises(ValueError, match="views"):
        coupled.step(torch.randn(4, D_IN), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels: the nscl"):
        coupled.step(torch.randn(4, 2, D_IN))
    with pytest.raises(ValueError, match="labels: expected 4"):
        coupled.step(torch.randn(4, 2, D_IN), torch.zeros(3, dtype=torch.long))
