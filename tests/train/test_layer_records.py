"""layer_alignment=true in the trainer: every block's layer_cka/<model>/<block> recomputed here from the final
models with hooks of the test's own and the float64 oracle; the h and z rows equal the records' h/ and z linear
CKA; the report draws layers.png; every encoder's block list names modules that run."""
import math

import pytest
import torch

from clnscl.train.config import load_config
from clnscl.train.loop import CoupledTrainer
from clnscl.train.models import build_model, encoder_blocks
from clnscl.train.report import write_report
from tests.support import metrics_oracle as oracle
from tests.train.test_loop import TINY


def _block_outputs(model, names, x):
    """The pooled outputs of the named modules on x, with hooks written here (eval mode)."""
    outs, mods = {}, dict(model.named_modules())
    handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o.detach())) for n in names]
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train()
    return {n: (o.mean((2, 3)) if o.dim() == 4 else o).flatten(1) for n, o in outs.items()}


def test_the_layer_records_are_each_blocks_cka_with_the_anchor(tmp_path):
    trainer = CoupledTrainer(load_config(None, [*TINY, "layer_alignment=true", "objectives=[cl,nscl,ce]"]),
                             tmp_path / "run", log=lambda *_: None)
    last = trainer.run()[-1]
    blocks, pool = encoder_blocks(trainer.models[0], "small_cnn")
    assert pool == "avg" and blocks[-2:] == ["encoder", "projector"] and len(blocks) == 5
    x = trainer.data.reference.load(torch.arange(len(trainer.data.reference)))
    anchor = _block_outputs(trainer.models[0], blocks, x)
    for name, model in zip(trainer.names[1:], trainer.models[1:]):
        other = _block_outputs(model, blocks, x)
        for b in blocks:
            want = oracle.cka(anchor[b].double(), other[b].double())
            assert math.isclose(last[f"layer_cka/{name}/{b}"], want, rel_tol=1e-5), (name, b)
        assert math.isclose(last[f"layer_cka/{name}/projector"], last[f"cka_linear/{name}"], rel_tol=1e-9)
        assert math.isclose(last[f"layer_cka/{name}/encoder"], last[f"h/cka_linear/{name}"], rel_tol=1e-9)
    write_report(tmp_path / "run")
    assert (tmp_path / "run" / "layers.png").read_bytes()[:4] == b"\x89PNG"
    assert all(m.training for m in trainer.models)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "vit_tiny"])
def test_every_encoders_blocks_run_and_pool_to_vectors(name):
    pytest.importorskip("torchvision")
    from clnscl.metrics import layer_alignment

    model = build_model(name, 3, 4, 16, 8, image_size=16)
    blocks, pool = encoder_blocks(model, name)
    assert len(blocks) == {"small_cnn": 5, "resnet18": 10, "vit_tiny": 14}[name]
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    res = layer_alignment(model, None, [x], blocks, blocks, method="exact", pool=pool, pairs="matching")
    torch.testing.assert_close(res.cka.diagonal(), torch.ones(len(blocks), dtype=torch.float64))
    assert bool(torch.isnan(res.cka[0, 1:]).all())  # matching pairs only
