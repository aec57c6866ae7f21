"""GPU-only check of the trainer (skipped without a CUDA device; run by scripts/gpu_check.sh)."""
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_training_on_the_gpu_with_bf16_autocast(tmp_path):
    """A tiny coupled run on CUDA (bf16 autocast, channels_last, Triton loss) records finite metrics."""
    import json

    from clnscl import cli

    sets = ["epochs=2", "batch_size=64", "eval_every=4", "warmup_epochs=1", "device=cuda", "amp=true"]
    assert cli.main(["train", "--out", str(tmp_path), *[a for kv in sets for a in ("--set", kv)]]) == 0
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(v == v for k, v in last.items() if isinstance(v, float))  # no NaN
    assert last["loss_gap"] <= last["loss_gap_bound"]
