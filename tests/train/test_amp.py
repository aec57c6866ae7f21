"""The trainer's bf16 autocast + channels_last path (what `amp=true` does on CUDA) exercised on the CPU, whose
autocast also runs in bf16: same losses as float32 within bf16 precision, finite metrics afterwards."""
import math

import pytest
import torch

from clnscl.train.config import Config
from clnscl.train.loop import CoupledTrainer


def _trainer(tmp_path, amp: bool) -> CoupledTrainer:
    cfg = Config(epochs=1, warmup_epochs=0, batch_size=64, num_classes=5, reference_size=40, device="cpu",
                 out=str(tmp_path))
    trainer = CoupledTrainer(cfg, tmp_path, log=lambda *_: None)
    if amp:  # as on CUDA: autocast to bf16, models in channels_last
        trainer.coupled.amp = True
        for m in trainer.models:
            m.to(memory_format=torch.channels_last)
    return trainer


def test_amp_path_matches_float32_within_bf16_precision(tmp_path):
    fp32 = _trainer(tmp_path / "fp32", amp=False).train_step()
    trainer = _trainer(tmp_path / "bf16", amp=True)
    z_dtypes = []
    hook = trainer.models[0].projector.register_forward_hook(lambda m, i, out: z_dtypes.append(out.dtype))
    bf16 = trainer.train_step()
    hook.remove()
    assert z_dtypes == [torch.bfloat16]  # the loss really saw bf16 embeddings
    assert fp32.keys() == bf16.keys()
    for key in fp32:
        assert bf16[key] == pytest.approx(fp32[key], rel=2e-2), key
    assert not torch.equal(torch.tensor(list(fp32.values())), torch.tensor(list(bf16.values())))
    for _ in range(2):
        trainer.train_step()
    rec = trainer.evaluate()
    assert all(math.isfinite(v) for v in rec.values() if isinstance(v, float))
    assert all(p.dtype == torch.float32 for m in trainer.models for p in m.parameters())  # master weights
