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


def test_gpu_decode_gives_the_cpu_decoders_canvases(tmp_path):
    """decode_on(cuda) (nvJPEG through torchvision.io.decode_jpeg, batched) against the same path on the CPU
    and against PIL: the same extents, pixels within a few levels; then a streamed run with gpu_decode=true."""
    import numpy as np
    from PIL import Image

    from clnscl.train.config import Config
    from clnscl.train.datasets import ImageFiles
    from clnscl.train.loop import CoupledTrainer
    from clnscl.train.pipeline import decode_on

    rng = np.random.default_rng(0)
    paths = []
    for k, (h, w) in enumerate([(375, 500), (500, 333), (300, 300), (240, 620)] * 3):
        folder = tmp_path / "tree" / f"c{k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, size=(h // 25 + 1, w // 25 + 1, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(folder / f"{k}.jpg", quality=90)
        paths.append(folder / f"{k}.jpg")
    files = ImageFiles(paths[:4], torch.zeros(4), 224, decode_size=256, max_aspect=1.334)
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths[:4]]
    names = [str(p) for p in paths[:4]]
    gpu, gpu_e = decode_on(torch.device("cuda"), data, files, names)
    cpu, cpu_e = decode_on(torch.device("cpu"), data, files, names)
    pil, pil_e = map(torch.stack, zip(*(files.train_image(i) for i in range(4))))
    assert gpu.is_cuda and torch.equal(gpu_e.cpu(), cpu_e) and torch.equal(cpu_e, pil_e)
    for other in (cpu, pil):
        diff = (gpu.cpu().int() - other.int()).abs().float()
        assert diff.max() <= 8 and diff.mean() < 0.6, (diff.max(), diff.mean())
    cfg = Config(dataset="imagefolder", data_root=str(tmp_path / "tree"), stream=True, gpu_decode=True,
                 loader_workers=1, image_size=32, decode_size=40, decode_aspect=1.334, batch_size=4, epochs=1,
                 warmup_epochs=0, eval_every=1, knn_k=1, device="cuda", reference_fraction=0.34)
    recs = CoupledTrainer(cfg, tmp_path / "run", log=lambda *_: None).run()
    assert recs and all(v == v for k, v in recs[-1].items() if isinstance(v, float))
