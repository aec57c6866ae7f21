"""layer_alignment: every layer pair of two small CNNs against the NumPy float64 oracle on features taken by
running the layers one by one (no hooks), minibatch against pytorch-cka on the same batches, the sketch within
its stated bound, hooks and modes after an exception, one model against itself, layer choice, exports, and
method="auto" on stock torchvision models and under small budgets."""
import json
import math

import pytest
import torch
from torch import nn

from clnscl.metrics import layer_alignment
from clnscl.metrics.layers import count_sketch, sketch_error_bound
from tests.support import metrics_oracle as oracle


def _cnn(seed: int, width: int = 5) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.Conv2d(width, 6, 3, stride=2), nn.BatchNorm2d(6),
                         nn.Flatten(), nn.Linear(96, 7), nn.Tanh(), nn.Linear(7, 5)).double()


def _outputs(model: nn.Sequential, x: torch.Tensor, pool=None) -> list[torch.Tensor]:
    """Each layer's output (flattened, optionally pooled) by running the Sequential one layer at a time."""
    model.eval()
    outs = []
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            f = x
            if pool == "avg" and f.dim() > 2:
                f = f.mean((2, 3))
            outs.append(f.flatten(1))
    return outs


def _data(n: int = 53, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 11, 11, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_exact_equals_the_float64_oracle_for_every_layer_pair(kernel):
    a, b, x = _cnn(0), _cnn(1, width=4), _data()
    res = layer_alignment(a, b, list(x.split(17)), method="exact", kernel=kernel, rsa=True)
    assert a.training and b.training  # modes restored
    fa, fb = _outputs(a, x), _outputs(b, x)
    assert res.names_a == [str(i) for i in range(8)] and res.cka.shape == (8, 8) and res.samples == 53
    for i, u in enumerate(fa):
        for j, v in enumerate(fb):
            assert math.isclose(res.cka[i, j], oracle.cka(u, v, kernel), rel_tol=1e-9, abs_tol=1e-12), (i, j)
            assert math.isclose(res.rsa[i, j], oracle.rsa(u, v), rel_tol=1e-9, abs_tol=1e-12), (i, j)


def test_pooling_averages_the_spatial_dimensions():
    a, b, x = _cnn(0), _cnn(1), _data(31)
    res = layer_alignment(a, b, [x], ["0", "2", "5"], ["2", "3"], pool="avg")
    fa, fb = _outputs(a, x, "avg"), _outputs(b, x, "avg")
    for i, u in enumerate([fa[0], fa[2], fa[5]]):
        for j, v in enumerate([fb[2], fb[3]]):
            assert math.isclose(res.cka[i, j], oracle.cka(u, v), rel_tol=1e-9)


def test_minibatch_equals_pytorch_cka_on_the_same_batches():
    """pytorch-cka's compute_cka accumulates the same unbiased HSIC sums (in float32) and clamps to [0, 1]."""
    pc = pytest.importorskip("cka")
    a, b, x = _cnn(2), _cnn(3), _data(60, seed=4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=13)  # 4 × 13 + 8
    names = [str(i) for i in range(8)]
    theirs = pc.compute_cka(a, b, loader, layers=names, model2_layers=names, device="cpu", progress=False)[0]
    ours = layer_alignment(a, b, loader, method="minibatch")
    assert ours.method == "minibatch" and ours.samples == 60
    torch.testing.assert_close(ours.cka.clamp(0, 1), theirs.double(), rtol=1e-5, atol=1e-6)
    assert bool((ours.cka < 0).any()) or bool((ours.cka > 0).all())  # unclamped: negative estimates stay


def test_minibatch_matches_the_oracle_unbiased_hsic_per_batch():
    a, b, x = _cnn(5), _cnn(6), _data(40, seed=2)
    batches = list(x.split(10))
    res = layer_alignment(a, b, batches, ["0", "5"], ["2", "7"], method="minibatch", kernel="cosine")
    for i, la in enumerate((0, 5)):
        for j, lb in enumerate((2, 7)):
            hxy = hxx = hyy = 0.0
            for xb in batches:
                u, v = _outputs(a, xb)[la], _outputs(b, xb)[lb]
                k, m = oracle.kernel_matrix(u, "cosine"), oracle.kernel_matrix(v, "cosine")
                hxy += oracle.hsic_unbiased(k, m)
                hxx += oracle.hsic_unbiased(k, k)
                hyy += oracle.hsic_unbiased(m, m)
            assert math.isclose(res.cka[i, j], hxy / math.sqrt(hxx * hyy), rel_tol=1e-9)


def test_the_sketch_stays_within_its_stated_bound_and_is_exact_when_not_needed():
    """Wide layers of low rank (where the stated bound is not vacuous, < π) sketched to k columns: the CKA error
    stays within arcsin δ_a + arcsin δ_b for every seed; layers narrower than k are exact."""
    torch.manual_seed(11)
    a = nn.Sequential(nn.Linear(6, 2500, bias=False), nn.Linear(2500, 9)).double()
    b = nn.Sequential(nn.Linear(6, 1800, bias=False), nn.Linear(1800, 5)).double()
    x = torch.randn(90, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = layer_alignment(a, b, list(x.split(30)), method="exact")
    with torch.no_grad():
        wide_a, wide_b = a[0](x), b[0](x)
    k = 1000
    bound = math.asin(min(1.0, sketch_error_bound(wide_a, k))) + math.asin(min(1.0, sketch_error_bound(wide_b, k)))
    assert bound < 1.5  # not vacuous
    for seed in range(5):
        sk = layer_alignment(a, b, list(x.split(30)), method="sketch", sketch_dim=k, seed=seed)
        assert abs(sk.cka[0, 0] - exact.cka[0, 0]) <= bound, seed
        for i, j in ((1, 1),):  # both narrower than k: no sketch
            assert math.isclose(sk.cka[i, j], exact.cka[i, j], rel_tol=1e-9)
        da = sketch_error_bound(wide_a, k)
        assert abs(sk.cka[0, 1] - exact.cka[0, 1]) <= math.asin(min(1.0, da))  # one side sketched
    wide = layer_alignment(a, b, [x], method="sketch", sketch_dim=10_000)
    torch.testing.assert_close(wide.cka, layer_alignment(a, b, [x], method="exact").cka)


def test_count_sketch_preserves_inner_products_in_expectation():
    x = torch.randn(6, 300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = sum(count_sketch(x, 32, s) @ count_sketch(x, 32, s).T for s in range(400)) / 400
    assert (mean - x @ x.T).abs().max() < 0.15 * (x @ x.T).diagonal().max()


def test_a_model_against_itself_is_symmetric_and_equals_passing_it_twice():
    a, x = _cnn(9), _data(33)
    calls = []
    a.register_forward_pre_hook(lambda m, inp: calls.append(1))
    names = [str(i) for i in range(8)]
    one = layer_alignment(a, None, list(x.split(11)), names, rsa=True)
    assert len(calls) == 3  # one forward pass per batch (automatic layers add one probe pass)
    torch.testing.assert_close(one.cka, one.cka.T, rtol=0, atol=0)
    torch.testing.assert_close(one.cka.diagonal(), torch.ones(8, dtype=torch.float64))
    twice = layer_alignment(a, _copy(a), list(x.split(11)), names, names, rsa=True)
    torch.testing.assert_close(one.cka, twice.cka, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one.rsa, twice.rsa, rtol=1e-12, atol=1e-12)
    mb = layer_alignment(a, None, list(x.split(11)), method="minibatch")
    torch.testing.assert_close(mb.cka, mb.cka.T)


def _copy(model):
    import copy
    return copy.deepcopy(model)


def test_hooks_are_removed_and_modes_restored_after_an_exception():
    a, b = _cnn(0), _cnn(1)
    a.train()
    b.eval()

    def loader():
        yield _data(8)
        raise RuntimeError("the loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        layer_alignment(a, b, loader())
    assert a.training and not b.training
    assert all(not m._forward_hooks for m in [*a.modules(), *b.modules()])
    with pytest.raises(ValueError, match="4 samples"):
        layer_alignment(a, b, [_data(3)], method="minibatch")
    assert all(not m._forward_hooks for m in a.modules())


def test_layers_by_name_type_or_automatically():
    a, b, x = _cnn(0), _cnn(1), _data(20)
    res = layer_alignment(a, b, [x], [nn.Conv2d, "5"], nn.Linear)
    assert res.names_a == ["0", "2", "5"] and res.names_b == ["5", "7"]
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        layer_alignment(a, b, [x], ["nope"])
    with pytest.raises(ValueError, match="no layer of type"):
        layer_alignment(a, b, [x], nn.LSTM)
    with pytest.raises(TypeError, match="name or its module type"):
        layer_alignment(a, b, [x], [3])
    deep = nn.Sequential(*[nn.Identity() for _ in range(70)])
    with pytest.warns(UserWarning, match="70 leaf modules"):
        layer_alignment(deep, None, [torch.randn(8, 4, dtype=torch.float64)], method="minibatch")


def test_bad_arguments_name_themselves():
    a, x = _cnn(0), [_data(8)]
    for kw, name in (({"method": "fast"}, "method"), ({"kernel": "rbf"}, "kernel"), ({"pool": "sum"}, "pool"),
                     ({"sketch_dim": 0}, "sketch_dim"), ({"budget_gib": 0}, "budget_gib"),
                     ({"method": "minibatch", "rsa": True}, "rsa")):
        with pytest.raises(ValueError, match=name):
            layer_alignment(a, None, x, **kw)
    with pytest.raises(ValueError, match="budget_gib"):
        layer_alignment(a, None, x, method="exact", budget_gib=1e-6)
    assert layer_alignment(a, None, x, budget_gib=5e-4, sketch_dim=16).method == "sketch"  # auto falls back
    with pytest.raises(ValueError, match="method='sketch' needs"):
        layer_alignment(a, None, x, budget_gib=1e-6)  # even the sketch does not fit
    with pytest.raises(ValueError, match="no batches"):
        layer_alignment(a, None, [])


def test_exports_and_heatmap(tmp_path):
    a, b, x = _cnn(0), _cnn(1), _data(20)
    res = layer_alignment(a, b, [x], ["0", "5"], ["2", "5", "7"], rsa=True)
    data = json.loads(res.save_json(tmp_path / "l.json").read_text())
    assert data["names_a"] == ["0", "5"] and data["cka"] == res.cka.tolist() and data["rsa"] == res.rsa.tolist()
    rows = res.save_csv(tmp_path / "l.csv").read_text().splitlines()
    assert rows[0] == "layer_a,layer_b,cka,rsa" and len(rows) == 7
    assert float(rows[2].split(",")[2]) == float(res.cka[0, 1])
    png = res.heatmap(tmp_path / "l.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    res.heatmap(tmp_path / "r.png", metric="rsa", annotate=False)
    with pytest.raises(ValueError, match="metric"):
        res.heatmap(tmp_path / "x.png", metric="svcca")


def test_matching_pairs_and_token_pooling():
    """pairs='matching' computes layer i against layer i only; pool='tokens' averages (b, T, D) over T."""
    a, b, x = _cnn(0), _cnn(1), _data(25)
    full = layer_alignment(a, b, [x], ["0", "2", "5"], ["0", "2", "5"], method="exact")
    diag = layer_alignment(a, b, [x], ["0", "2", "5"], ["0", "2", "5"], method="exact", pairs="matching")
    torch.testing.assert_close(diag.cka.diagonal(), full.cka.diagonal())
    assert bool(torch.isnan(diag.cka[~torch.eye(3, dtype=torch.bool)]).all())
    with pytest.raises(ValueError, match="as many layers"):
        layer_alignment(a, b, [x], ["0", "2"], ["0"], pairs="matching")
    with pytest.raises(ValueError, match="pairs"):
        layer_alignment(a, b, [x], pairs="some")
    tokens = nn.Sequential(nn.Linear(4, 6), nn.Identity()).double()
    t = torch.randn(20, 7, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = layer_alignment(tokens, None, [t], ["0"], ["1"], pool="tokens")
    assert math.isclose(res.cka[0, 0], 1.0, rel_tol=1e-12)
    with torch.no_grad():
        mean_token = tokens[0](t).mean(1)
    other = layer_alignment(tokens, nn.Sequential(nn.Identity()).double(), [t], ["0"], ["0"], pool="tokens")
    assert math.isclose(other.cka[0, 0], oracle.cka(mean_token, t.mean(1)), rel_tol=1e-9)


LAYER_WORKER = """
from clnscl.metrics import layer_alignment
from tests.metrics.test_layers import _cnn, _data
batches = list(_data(70, seed=9).split(10))
mine = batches[:3] if rank == 0 else batches[3:]  # 30 and 40 rows
a, b = _cnn(0), _cnn(1)
result = {}
for method in ("exact", "minibatch", "sketch"):
    r = layer_alignment(a, b, mine, method=method, rsa=method != "minibatch", sketch_dim=50,
                        process_group=dist.group.WORLD)
    result[method] = {"cka": r.cka.tolist(), "rsa": None if r.rsa is None else r.rsa.tolist(), "n": r.samples}
"""


@pytest.mark.distributed
def test_two_processes_with_their_parts_equal_one_process(tmp_path):
    """Each rank passes its own batches (30 and 40 rows); the all-reduced statistics give the one-process
    result on all 70 rows, for the exact, minibatch and sketch methods."""
    import torch.distributed as dist

    from tests.support.processes import run_gloo_workers

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    results = run_gloo_workers(LAYER_WORKER, 2, tmp_path)
    a, b, x = _cnn(0), _cnn(1), _data(70, seed=9)
    for method in ("exact", "minibatch", "sketch"):
        one = layer_alignment(a, b, list(x.split(10)), method=method, rsa=method != "minibatch", sketch_dim=50)
        for res in results:
            got = res[method]
            assert got["n"] == 70
            torch.testing.assert_close(torch.tensor(got["cka"], dtype=torch.float64), one.cka, rtol=1e-9, atol=1e-12)
            if one.rsa is not None:
                torch.testing.assert_close(torch.tensor(got["rsa"], dtype=torch.float64), one.rsa, rtol=1e-9,
                                           atol=1e-12)


def test_minibatch_on_float32_features_keeps_float64_accuracy():
    """Features with a large common offset (what ReLU blocks give): the per-batch centring lets the float32
    Gram products carry the estimator's cancellations; the float32 run equals the float64 one to 1e-5."""
    torch.manual_seed(4)
    a = nn.Sequential(nn.Linear(20, 3000), nn.ReLU(), nn.Linear(3000, 50))
    b = nn.Sequential(nn.Linear(20, 2000), nn.ReLU(), nn.Linear(2000, 40))
    for m in (a, b):
        nn.init.constant_(m[0].bias, 100.0)  # every unit on, the offset far above the spread (≈ 0.6)
    x = torch.randn(64, 20, generator=torch.Generator().manual_seed(2))
    f32 = layer_alignment(a, b, list(x.split(8)), method="minibatch")
    f64 = layer_alignment(a.double(), b.double(), list(x.double().split(8)), method="minibatch")
    torch.testing.assert_close(f32.cka, f64.cka, rtol=0, atol=1e-5)



def test_review_cases_inplace_outputs_matching_pairs_shared_modules_and_small_batches(tmp_path):
    """A layer whose output a later in-place op changes keeps its own output; pairs='matching' between two models
    leaves the other cells NaN (no transposed pair); an automatic choice leaves out a module that runs twice (a
    ResNet block's shared ReLU) with a warning; a last batch of fewer than 4 samples is left out of the minibatch
    estimate with a warning; NaN cells are JSON null."""
    torch.manual_seed(0)
    inplace = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(inplace=True), nn.Linear(16, 4)).double()
    copy = nn.Sequential(*inplace[:2], nn.ReLU(), inplace[3])
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = layer_alignment(inplace, None, list(x.split(10)), ["1", "2"], method="exact").cka
    want = layer_alignment(copy, None, list(x.split(10)), ["1", "2"], method="exact").cka
    torch.testing.assert_close(got, want)
    assert got[0, 1] < 0.99
    a, b, xs = _cnn(0), _cnn(1), _data(20)
    res = layer_alignment(a, b, [xs], ["0", "2", "4"], ["2", "4", "0"], method="exact", pairs="matching")
    full = layer_alignment(a, b, [xs], ["0", "2", "4"], ["2", "4", "0"], method="exact")
    torch.testing.assert_close(res.cka.diagonal(), full.cka.diagonal())
    assert bool(torch.isnan(res.cka[~torch.eye(3, dtype=torch.bool)]).all())
    assert json.loads(res.save_json(tmp_path / "m.json").read_text())["cka"][0][1] is None

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.act = nn.Linear(8, 8), nn.Linear(8, 8), nn.ReLU()

        def forward(self, v):
            return self.act(self.fc2(self.act(self.fc1(v))))

    with pytest.warns(UserWarning, match="act"):
        auto = layer_alignment(Shared().double(), None, [x], method="exact")
    assert auto.names_a == ["fc1", "fc2"]
    with pytest.warns(UserWarning, match="2 sample"):
        mb = layer_alignment(a, b, [xs[:8], xs[8:16], xs[16:18]], ["0"], ["0"], method="minibatch")
    assert mb.samples == 16


# ------------------------------------------------------------------------------------------------- method="auto"


def _images(seed: int = 0) -> list[torch.Tensor]:
    """Three seeded batches of 8 RGB images of 32 × 32."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(3)]


def _auto_chose(method: str) -> str:
    """The warning of an automatic choice other than exact: the choice, then the GiB exact needs against the budget."""
    return rf"method='auto' chose method='{method}'.*: method='exact' needs [0-9.e+-]+ GiB .* above budget_gib="


def test_auto_on_a_stock_resnet18_returns_every_layer_by_the_minibatch_estimator_and_says_so():
    """Default arguments on torchvision's ResNet-18 (its exact statistics at 32 × 32: 134 GiB, its sketch at 4096
    columns 60 GiB, over the 4 GiB budget) give the full matrix of every leaf that runs once (the blocks' shared
    ReLUs left out), named 'minibatch' and announced; an explicit method that does not fit still fails."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model, loader = tv.models.resnet18(num_classes=10), _images()
    with pytest.warns(UserWarning, match=_auto_chose("minibatch") + "4.0, and method='sketch' needs"):
        res = layer_alignment(model, None, loader)
    leaves = [n for n, m in model.named_modules() if n and next(m.children(), None) is None]
    assert res.names_a == res.names_b == [n for n in leaves if not (n.startswith("layer") and n.endswith(".relu"))]
    assert len(res.names_a) == 44 and res.cka.shape == (44, 44)
    assert res.method == "minibatch" and res.sketch_dim is None and res.samples == 24
    assert bool(res.cka.isfinite().all())
    torch.testing.assert_close(res.cka.diagonal(), torch.ones(44, dtype=torch.float64))
    torch.testing.assert_close(res.cka, res.cka.T)
    with pytest.raises(ValueError, match=r"method='sketch' needs [0-9.]+ GiB .* budget_gib=4.0; pool the layers"):
        layer_alignment(model, None, loader, method="sketch")


def test_auto_on_a_stock_vision_transformer_flattens_its_token_outputs_and_says_so():
    """Default arguments on a small torchvision VisionTransformer: 65 tokens of its (b, 65, 96) MLP outputs
    flattened to 6,240 features put exact (53 GiB) and the sketch over the budget; every layer that runs once
    is compared (the attention's out_proj, never called as a module, left out); the classifier head, which
    torchvision initialises to zero, is constant, so its CKA is undefined: NaN, the rest finite."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    vit = tv.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=48,
                                      mlp_dim=96, num_classes=10)
    chose = r"method='auto' chose method='minibatch': method='exact' needs [0-9.]+ GiB of statistics for these layers"
    with pytest.warns(UserWarning, match=chose + r" \(widest 6240 features\), above budget_gib=4.0"):
        res = layer_alignment(vit, None, _images(1))
    assert res.method == "minibatch" and len(res.names_a) == 20 and res.cka.shape == (20, 20)
    assert res.names_a[0] == "conv_proj" and res.names_a[-1] == "heads.head"
    assert not any(n.endswith("out_proj") for n in res.names_a)
    assert bool(res.cka[:, -1].isnan().all()) and bool(res.cka[-1].isnan().all())
    inner = res.cka[:-1, :-1]
    assert bool(inner.isfinite().all())
    torch.testing.assert_close(inner.diagonal(), torch.ones(19, dtype=torch.float64))


def _wide(seed: int = 11) -> nn.Sequential:
    """Layer "0": 1,500 features of rank 6; layer "1": 9 features. Its exact statistics against itself: 0.067 GiB."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 1500, bias=False), nn.Linear(1500, 9)).double()


def test_auto_under_a_small_budget_runs_the_estimator_that_fits_with_its_accuracy():
    """budget_gib=0.025 on a model against itself (exact needs 0.067 GiB): with sketch_dim=800 the sketch fits
    and is chosen, within its stated bound of exact; at the default sketch_dim (not below the widths, so no
    smaller) the minibatch estimator is chosen, equal to method='minibatch' and to the per-batch unbiased HSIC
    oracle; with rsa=True, which minibatch lacks, the sketch to the largest k that fits is chosen: k fits and
    k + 1 does not, its CKA within the bound at k of exact, and its RSA that of method='sketch' at k."""
    model = _wide()
    x = torch.randn(60, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batches = list(x.split(15))
    exact = layer_alignment(model, None, batches, method="exact", rsa=True)
    with torch.no_grad():
        wide = model[0](x)

    def bound(k: int) -> float:  # |ΔCKA| of the pair (wide layer sketched, narrow one not), probability ≥ 0.95
        return math.asin(min(1.0, sketch_error_bound(wide, k)))

    with pytest.warns(UserWarning, match=_auto_chose("sketch") + r"0.025; the sketch needs"):
        sk = layer_alignment(model, None, batches, budget_gib=0.025, sketch_dim=800)
    assert sk.method == "sketch" and sk.sketch_dim == 800 and bound(800) < 1.0
    assert abs(sk.cka[0, 1] - exact.cka[0, 1]) <= bound(800)
    torch.testing.assert_close(sk.cka, layer_alignment(model, None, batches, method="sketch", sketch_dim=800).cka)

    with pytest.warns(UserWarning, match=_auto_chose("minibatch")):
        mb = layer_alignment(model, None, batches, budget_gib=0.025)
    assert mb.method == "minibatch" and mb.sketch_dim is None
    torch.testing.assert_close(mb.cka, layer_alignment(model, None, batches, method="minibatch").cka, rtol=0, atol=0)
    hxy = hxx = hyy = 0.0
    for xb in batches:
        with torch.no_grad():
            k, m = oracle.kernel_matrix(model[0](xb), "linear"), oracle.kernel_matrix(model(xb), "linear")
        hxy, hxx = hxy + oracle.hsic_unbiased(k, m), hxx + oracle.hsic_unbiased(k, k)
        hyy += oracle.hsic_unbiased(m, m)
    assert math.isclose(mb.cka[0, 1], hxy / math.sqrt(hxx * hyy), rel_tol=1e-9)

    with pytest.warns(UserWarning, match=_auto_chose("sketch") + r".*method='minibatch' gives no rsa; k = "):
        small = layer_alignment(model, None, batches, budget_gib=0.025, rsa=True)
    k = small.sketch_dim
    assert small.method == "sketch" and 800 < k < 1500 and bound(k) < 1.0
    assert abs(small.cka[0, 1] - exact.cka[0, 1]) <= bound(k)
    same_k = layer_alignment(model, None, batches, method="sketch", sketch_dim=k, rsa=True, budget_gib=0.025)
    torch.testing.assert_close(small.rsa, same_k.rsa, rtol=0, atol=0)
    assert bool(small.rsa.isfinite().all())
    with pytest.raises(ValueError, match="method='sketch' needs"):
        layer_alignment(model, None, batches, method="sketch", sketch_dim=k + 1, rsa=True, budget_gib=0.025)


def test_auto_names_every_fix_when_nothing_fits_and_reports_its_sketch_dim_in_the_export(tmp_path):
    model, x = _wide(), torch.randn(20, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"method='auto': no method fits budget_gib=1e-07: .* even at sketch_dim="
                                         r"1, and method='minibatch' needs .* raise budget_gib, name fewer layers"):
        layer_alignment(model, None, [x], budget_gib=1e-7)
    with pytest.raises(ValueError, match="minibatch' needs batches of at least 4 samples"):
        layer_alignment(model, None, [x[:3]], budget_gib=1e-7)
    with pytest.warns(UserWarning, match="sketch_dim=100"):
        res = layer_alignment(model, None, [x], budget_gib=0.01, sketch_dim=100)
    assert json.loads(res.save_json(tmp_path / "s.json").read_text())["sketch_dim"] == 100


AUTO_WORKER = """
from clnscl.metrics import layer_alignment
from tests.metrics.test_layers import _wide
x = torch.randn(43, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
mine = [x[:3], x[3:20]] if rank == 0 else [x[20:]]  # rank 0's first batch is too small for minibatch
r = layer_alignment(_wide(), None, mine, budget_gib=0.025, process_group=dist.group.WORLD)
result = {"method": r.method, "k": r.sketch_dim, "cka": r.cka.tolist(), "n": r.samples}
"""


@pytest.mark.distributed
def test_auto_makes_one_choice_over_the_process_group(tmp_path):
    """Rank 0's first batch has 3 samples, rank 1's 23: minibatch cannot run on rank 0, so both ranks take the
    sketch to the largest k that fits, and the all-reduced result is the one-process sketch at that k."""
    import torch.distributed as dist

    from tests.support.processes import run_gloo_workers

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    results = run_gloo_workers(AUTO_WORKER, 2, tmp_path)
    x = torch.randn(43, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    k = results[0]["k"]
    one = layer_alignment(_wide(), None, [x], method="sketch", sketch_dim=k)
    for res in results:
        assert res["method"] == "sketch" and res["k"] == k and res["n"] == 43
        torch.testing.assert_close(torch.tensor(res["cka"], dtype=torch.float64), one.cka, rtol=1e-9, atol=1e-12)
