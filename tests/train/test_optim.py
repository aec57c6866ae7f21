"""LARS against a direct transcription of its update rule."""
import torch

from clnscl.train.optim import LARS


def test_lars_step_matches_the_formula():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    opt = LARS([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=0.5, momentum=0.9, eta=0.01)
    w0, b0, buf_w, buf_b = w.detach().clone(), b.detach().clone(), None, None
    for _ in range(3):
        gw, gb = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((7, 5), (5,)))
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        u = gw + 0.1 * w0
        u = u * (0.01 * w0.norm() / u.norm())
        buf_w = u if buf_w is None else 0.9 * buf_w + u
        buf_b = gb if buf_b is None else 0.9 * buf_b + gb
        w0, b0 = w0 - 0.5 * buf_w, b0 - 0.5 * buf_b
        torch.testing.assert_close(w.detach(), w0)
        torch.testing.assert_close(b.detach(), b0)


def test_trainer_runs_with_lars(tmp_path):
    from clnscl import cli

    sets = ["epochs=1", "batch_size=64", "eval_every=100", "warmup_epochs=0", "optimizer=lars", "lr=1.0"]
    assert cli.main(["train", "--out", str(tmp_path), *[a for kv in sets for a in ("--set", kv)]]) == 0
