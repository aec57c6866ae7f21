"""The theory/ records of a coupled run: each value recomputed here from the run's own pieces (its models'
reference features, its schedule, its batches), the report's theory figure and lines, and no theory records
for a run without cl and nscl."""
import copy
import math

import torch
import torch.nn.functional as F

from clnscl.train.config import load_config
from clnscl.train.loop import CoupledTrainer
from clnscl.train.report import write_report
from clnscl.train.theory_records import same_class_max
from tests.support.features import features as _features
from tests.train.test_loop import TINY


def _materialised_terms(x, y):
    """ρ, r and the gaps from N × N float64 matrices (independent of the streaming statistics)."""
    sx, sy = (F.normalize(t.double(), dim=1) for t in (x, y))
    sx, sy = sx @ sx.T, sy @ sy.T
    n = len(sx)
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kx, ky = h @ sx @ h, h @ sy @ h
    i, j = torch.triu_indices(n, n, 1)
    a, b = sx[i, j], sy[i, j]
    return {"gap": float((sx - sy).norm()), "rho": float((kx - ky).norm() / kx.norm()),
            "r": float((a - b).norm() / (a - a.mean()).norm()), "k_norm": float(kx.norm()),
            "rdm_scale": float((a - a.mean()).norm())}


def test_the_theory_records_are_the_runs_own_quantities(tmp_path):
    cfg = load_config(None, [*TINY, "theory_delta=0.1"])
    trainer = CoupledTrainer(cfg, tmp_path / "run", log=lambda *_: None)
    sampler = copy.deepcopy(trainer.sampler)  # replays the run's batches
    labels = trainer.data.train.labels
    recs = trainer.run()
    last = recs[-1]
    # the similarity gap and the corollaries' ratios on the reference set's z, from the final models
    ref = trainer.data.reference
    (_, z_cl), (_, z_nscl) = _features(trainer.models[:2], ref, torch.arange(len(ref)), trainer.device)
    want = _materialised_terms(z_cl, z_nscl)
    for key in ("gap", "rho", "r", "k_norm", "rdm_scale"):
        assert math.isclose(last[f"theory/{key}"], want[key], rel_tol=1e-6), key
    assert math.isclose(last["theory/cka_bound"], (1 - want["rho"]) / (1 + want["rho"]), rel_tol=1e-6)
    assert last["theory/cka_bound"] <= last["cka_cosine/nscl"] and last["theory/rsa_bound"] <= last["rsa_pearson/nscl"]
    assert last["theory/gap_trivial"] == 2 * len(ref)
    # Σ η over the steps: the warm-up then cosine schedule at the run's peak rate, written out here
    steps, warm, total = last["step"], trainer.sampler.epoch_length * cfg.warmup_epochs, trainer.total_steps
    lr = cfg.scaled_lr()
    etas = [lr * ((t + 1) / warm if t < warm else 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm))))
            for t in range(steps)]
    assert math.isclose(last["theory/eta_sum"], sum(etas), rel_tol=1e-12)
    # Theorem 1 with Δ_{π,δ} from the training set's class frequencies, T = steps, δ = 0.1
    b, tau = cfg.batch_size, cfg.temperature
    pi_max = float(torch.bincount(labels).max()) / len(labels)
    eps = math.sqrt(math.log(steps * b / 0.1) / (2 * b))
    delta = 2 * math.exp(2 / tau) * (pi_max + eps) / (1 - pi_max - eps)
    s = sum(etas)
    bound = math.exp(s / (2 * tau**2 * b)) * s / (tau * math.sqrt(b)) * delta
    assert math.isclose(last["theory/gap_bound"], bound, rel_tol=1e-9)
    assert math.isclose(last["theory/same_class_limit"], pi_max + eps, rel_tol=1e-12)
    # the largest same-class fraction of any anchor over the run's batches (InfoNCE denominators: 2B − 1 rows)
    seen = 0.0
    for _ in range(steps):
        y = labels[sampler.next_batch()]
        n = int(torch.bincount(y).max())
        seen = max(seen, 2 * (n - 1) / (2 * len(y) - 1))
    assert last["theory/same_class_max"] == seen and 0 < seen < 1
    summary = write_report(tmp_path / "run")
    assert (tmp_path / "run" / "theory.png").exists() and "Theorem 1: at step" in summary
    assert "Corollary 1 (CKA)" in summary and "batch composition" in summary


def test_same_class_max_is_the_largest_anchor_fraction():
    """Against every anchor's count of same-class rows in its CL denominator, both forms of the denominator."""
    gen = torch.Generator().manual_seed(3)
    for trial in range(20):
        b, views = int(torch.randint(2, 17, (1,), generator=gen)), int(torch.randint(2, 4, (1,), generator=gen))
        y = torch.randint(0, int(torch.randint(1, 6, (1,), generator=gen)), (b,), generator=gen)
        rows_y, rows_s = y.repeat_interleave(views), torch.arange(b).repeat_interleave(views)
        for decoupled in (True, False):
            best = 0.0
            for a in range(b * views):
                den = [j for j in range(b * views) if j != a and (not decoupled or rows_s[j] != rows_s[a])]
                same = [j for j in den if rows_y[j] == rows_y[a] and rows_s[j] != rows_s[a]]
                best = max(best, len(same) / len(den))
            assert math.isclose(same_class_max(y, views, decoupled), best, rel_tol=1e-12), (trial, decoupled)


def test_a_run_without_cl_and_nscl_has_no_theory_records(tmp_path):
    recs = CoupledTrainer(load_config(None, [*TINY, "objectives=[cl,supcon]"]), tmp_path / "run",
                          log=lambda *_: None).run(stop_after=4)
    assert not any(k.startswith("theory/") for r in recs for k in r)
    write_report(tmp_path / "run")
    assert not (tmp_path / "run" / "theory.png").exists()
