"""The trainer's switches: grad_clip bounds every model's gradient norm at its optimiser step (and without it
the norms exceed the bound, so the check can fail); deterministic=true turns torch's deterministic algorithms on
for the run (and the loss's Triton ops off their atomic schedules), false turns them off; compile=true trains
through torch.compile to the eager run's records."""
import pytest
import torch

from clnscl.train.config import ConfigError, load_config
from clnscl.train.loop import CoupledTrainer
from clnscl.train.records import without_timings

TINY = ["epochs=1", "batch_size=64", "eval_every=4", "warmup_epochs=0", "num_classes=5", "reference_size=60",
        "objectives=[cl,nscl]"]


@pytest.fixture
def restore_algorithms():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


def _gradient_norms(trainer, steps):
    """The total gradient norm each optimiser saw at each of `steps` training steps."""
    norms = []
    for opt in trainer.optimizers:
        params = [p for group in opt.param_groups for p in group["params"]]
        step = opt.step

        def spy(*args, _step=step, _params=params, **kwargs):
            norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in _params if p.grad is not None])))
            return _step(*args, **kwargs)

        opt.step = spy
    for _ in range(steps):
        trainer.train_step()
    return torch.stack(norms)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_grad_clip_bounds_the_gradient_norm_at_every_step(tmp_path):
    clipped = CoupledTrainer(load_config(None, [*TINY, "grad_clip=0.05"]), tmp_path / "a", log=lambda *_: None)
    assert (_gradient_norms(clipped, 3) <= 0.05 * (1 + 1e-5)).all()
    free = CoupledTrainer(load_config(None, TINY), tmp_path / "b", log=lambda *_: None)
    assert (_gradient_norms(free, 3) > 0.05).any()  # the bound binds: without it the check above would fail


def test_grad_clip_must_be_positive():
    with pytest.raises(ConfigError, match="grad_clip"):
        load_config(None, ["grad_clip=0"])


def test_deterministic_sets_the_algorithms_for_the_run(tmp_path, restore_algorithms):
    from clnscl.loss.triton import ops

    trainer = CoupledTrainer(load_config(None, [*TINY, "deterministic=true"]), tmp_path / "d", log=lambda *_: None)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not ops.fixed_shift(True, 10.0, 90)  # the Triton ops avoid their atomic adds
    trainer.train_step()
    CoupledTrainer(load_config(None, TINY), tmp_path / "n", log=lambda *_: None)
    assert not torch.are_deterministic_algorithms_enabled() and ops.fixed_shift(True, 10.0, 90)


def test_compiled_models_train_to_the_eager_records(tmp_path, monkeypatch):
    """Through dynamo and AOT autograd (the aot_eager backend: inductor's code generation is torch's own, and a
    minute of compiling on this machine)."""
    compiled_with = []

    def compile_(model, **kwargs):
        compiled_with.append(model)
        return real_compile(model, backend="aot_eager", **kwargs)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", compile_)
    strip = lambda recs: [without_timings(r) for r in recs]  # noqa: E731
    eager = strip(CoupledTrainer(load_config(None, TINY), tmp_path / "e", log=lambda *_: None).run(stop_after=4))
    compiled = strip(CoupledTrainer(load_config(None, [*TINY, "compile=true"]), tmp_path / "c",
                                    log=lambda *_: None).run(stop_after=4))
    assert len(compiled_with) == 2  # one per model
    assert [r["step"] for r in compiled] == [r["step"] for r in eager]
    for got, want in zip(compiled, eager):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
            else:
                assert got[key] == value, key
