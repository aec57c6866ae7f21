"""The training images' path from files to the device: decoding with the aspect ratio kept (on the CPU, and
the GPU decoder's path run on the CPU), canvases and extents, the DataLoader against in-process reading, the
evaluation sets' cache, and the config keys that select them."""
import numpy as np
import pytest
import torch

from clnscl.train.config import Config, ConfigError
from clnscl.train.datasets import ImageFiles, decode_image, on_canvas, scan_imagefolder
from clnscl.train.pipeline import StepImages, decode_on, resize_shorter
from clnscl.train.samplers import UniformBatches
from tests.support.imagetree import image_tree


def _picture(path, h, w, seed, fmt):
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 5, 3)).repeat(-(-h // 4), 0).repeat(-(-w // 5), 1)[:h, :w]
    Image.fromarray(coarse.astype(np.uint8), "RGB").save(path, format=fmt, quality=95)
    return path


@pytest.mark.parametrize("shape", [(40, 60), (61, 33), (30, 30)])
def test_decoding_keeps_the_aspect_ratio_up_to_max_aspect(tmp_path, shape):
    """The shorter side resized to the size and the longer one cut about the centre to size · max_aspect:
    torchvision's Resize(size) then CenterCrop on PIL images, to the pixel."""
    TF = pytest.importorskip("torchvision.transforms.v2.functional")
    from PIL import Image

    path = _picture(tmp_path / "a.png", *shape, seed=1, fmt="PNG")
    pil = Image.open(path).convert("RGB")
    for size, max_aspect in ((16, 1.0), (16, 1.25), (20, 2.0), (17, 1.5)):
        got = decode_image(path, size, max_aspect)
        resized = TF.resize(pil, size, interpolation=TF.InterpolationMode.BILINEAR)
        w, h = resized.size
        side = int(size * max_aspect)
        want = TF.pil_to_tensor(TF.center_crop(resized, [min(h, side), min(w, side)]))
        assert got.dtype == torch.uint8 and torch.equal(got, want), (size, max_aspect)
        assert min(got.shape[1:]) == size and max(got.shape[1:]) <= side


def test_the_gpu_decoders_path_equals_the_cpu_decoding_to_a_level(tmp_path):
    """decode_on (torchvision's decode_jpeg, batched, then resize_shorter) run on the CPU, against the PIL
    decoding of the same files: the same canvases and extents, pixels within a few levels (two resize
    implementations); a PNG in the batch goes through the CPU decoder."""
    paths = [_picture(tmp_path / f"{k}.jpg", h, w, k, "JPEG") for k, (h, w) in enumerate([(40, 60), (61, 33),
                                                                                          (30, 30), (25, 90)])]
    paths.append(_picture(tmp_path / "4.png", 44, 52, 4, "PNG"))
    files = ImageFiles(paths, torch.zeros(len(paths)), 16, decode_size=18, max_aspect=1.5)
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    canvases, extents = decode_on(torch.device("cpu"), data, files, [str(p) for p in paths])
    want_c, want_e = map(torch.stack, zip(*(files.train_image(i) for i in range(len(paths)))))
    assert canvases.shape == want_c.shape == (5, 3, 27, 27) and torch.equal(extents, want_e)
    diff = (canvases.int() - want_c.int()).abs().float()
    assert diff.max() <= 6 and diff.mean() < 0.5, (diff.max(), diff.mean())
    bad = torch.tensor([255, 216, 255, 0, 1], dtype=torch.uint8)  # a JPEG's magic, then nothing
    with pytest.raises(OSError, match="bad.jpg"):  # the failing file named, not the batch's first
        decode_on(torch.device("cpu"), [data[0], bad], files, [str(paths[0]), "bad.jpg"])
    bmp = _picture(tmp_path / "5.bmp", 30, 41, 5, "BMP")  # a format torchvision's decoder lacks: PIL reads it
    got, ext = decode_on(torch.device("cpu"), [torch.frombuffer(bytearray(bmp.read_bytes()), dtype=torch.uint8)],
                         files, [str(bmp)])
    want, want_ext = ImageFiles([bmp], torch.zeros(1), 16, decode_size=18, max_aspect=1.5).train_image(0)
    assert torch.equal(ext[0], want_ext) and want_ext.tolist() == [18, 24]
    assert (got[0].int() - want.int()).abs().max() <= 6


def test_resize_shorter_equals_torchvision_resize_on_tensors():
    TF = pytest.importorskip("torchvision.transforms.v2.functional")
    img = torch.randint(0, 256, (3, 37, 52), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = resize_shorter(img, 20, 1.3)
    want = TF.center_crop(TF.resize(img.float(), 20, antialias=True), [20, 26]).round().to(torch.uint8)
    assert torch.equal(got, want)
    uint8 = TF.center_crop(TF.resize(img, 20, antialias=True), [20, 26])  # its own integer rounding
    assert (got.int() - uint8.int()).abs().max() <= 1


@pytest.mark.parametrize("gpu_decode", [False, True])
def test_the_loader_gives_the_canvases_of_in_process_reading(tmp_path, gpu_decode):
    """StepImages with 2 DataLoader workers and with none give the same canvases, extents and step order;
    images narrower than max_aspect fill their extent, wider ones are cut to the canvas."""
    paths, labels, _ = scan_imagefolder(image_tree(tmp_path / "tree", per_class=6))
    files = ImageFiles(paths, labels, 12, decode_size=14, max_aspect=1.5)
    got = []
    for workers in (0, 2):
        sampler = UniformBatches(len(files), 6, torch.Generator().manual_seed(0))
        images = StepImages(files, sampler, lambda idx: idx[:4], torch.device("cpu"), workers, gpu_decode=gpu_decode)
        try:
            got.append([(idx, *images.next(idx[:4])) for idx in (sampler.next_batch() for _ in range(5))])
        finally:
            images.close()
    for (i0, x0, e0), (i1, x1, e1) in zip(*got):
        assert torch.equal(i0, i1) and torch.equal(x0, x1) and torch.equal(e0, e1)
        assert x0.shape == (4, 3, 21, 21) and x0.dtype == torch.float32
        assert set(e0.min(1).values.tolist()) == {14} and e0.max() <= 21
    want = on_canvas(decode_image(files.paths[int(got[0][0][0][0])], 14, 1.5), 21)
    assert torch.equal(got[0][0][2][0], want[1])  # PIL's decoding; the GPU decoder's resize is within levels
    torch.testing.assert_close(got[0][0][1][0], want[0].float() / 255, rtol=0, atol=0 if not gpu_decode else 6 / 255)


def test_the_evaluation_cache_decodes_each_image_once(tmp_path, monkeypatch):
    from clnscl.train import datasets

    paths, labels, _ = scan_imagefolder(image_tree(tmp_path / "tree", per_class=4))
    plain = ImageFiles(paths, labels, 12, workers=2)
    cached = plain.cached()
    calls = []
    decode = datasets.decode_image
    monkeypatch.setattr(datasets, "decode_image", lambda p, s, a=1.0: calls.append(p) or decode(p, s, a))
    idx = torch.tensor([5, 1, 5, 9])
    first = cached.load(idx)
    assert torch.equal(first, plain.load(idx)) and len(calls) == 3 + 4  # 3 distinct files, then 4 uncached
    assert torch.equal(cached.load(torch.tensor([9, 1])), first[[3, 1]]) and len(calls) == 7
    cached.load(torch.tensor([0]))
    assert len(calls) == 8 and cached.subset(torch.tensor([1])).cache
    cached.close()
    plain.close()


def test_the_decode_keys_need_streamed_images_and_gpu_decode_a_gpu(tmp_path):
    for key in ("decode_size=32", "decode_aspect=1.5", "gpu_decode=true"):
        k, v = key.split("=")
        with pytest.raises(ConfigError, match=k):
            Config(**{k: {"32": 32, "1.5": 1.5, "true": True}[v]})
    with pytest.raises(ConfigError, match="decode_aspect"):
        Config(dataset="imagefolder", data_root="x", stream=True, decode_aspect=0.5)
    from clnscl.train.loop import CoupledTrainer

    tree = image_tree(tmp_path / "tree", per_class=4)
    cfg = Config(dataset="imagefolder", data_root=str(tree), stream=True, gpu_decode=True, device="cpu",
                 image_size=12, batch_size=6)
    with pytest.raises(ValueError, match="gpu_decode"):
        CoupledTrainer(cfg, tmp_path / "run", log=lambda *_: None)


def test_a_streamed_run_on_canvases_resumes_exactly(tmp_path):
    """decode_size above image_size and decode_aspect 1.5: the run trains on whole images, and a run resumed
    mid-epoch equals the uninterrupted one."""
    from clnscl.train.config import load_config
    from clnscl.train.loop import CoupledTrainer
    from tests.train.test_loop import without_timings

    tree = image_tree(tmp_path / "tree", per_class=8)
    over = [f"data_root={tree}", "dataset=imagefolder", "stream=true", "loader_workers=1", "image_size=12",
            "decode_size=16", "decode_aspect=1.5", "batch_size=6", "epochs=2", "warmup_epochs=0", "eval_every=2",
            "knn_k=3", "hidden_dim=16", "projector_dim=8", "checkpoint_every=2", "objectives=[cl,nscl]",
            "device=cpu", "augment.preset=simclr_imagenet", "augment.blur_kernel=3"]
    full = CoupledTrainer(load_config(None, over), tmp_path / "full", log=lambda *_: None).run()
    CoupledTrainer(load_config(None, over), tmp_path / "cut", log=lambda *_: None).run(stop_after=3)
    resumed = CoupledTrainer(load_config(None, over), tmp_path / "cut", log=lambda *_: None).run(resume=True)
    strip = lambda recs: [without_timings(r) for r in recs]  # noqa: E731
    assert strip(resumed) == strip(full) and full[-1]["step"] == 6


def test_canvases_with_rotation_need_zero_padding_in_the_config():
    with pytest.raises(ConfigError, match="padding_mode"):
        Config(dataset="imagefolder", data_root="x", stream=True, decode_aspect=1.5,
               augment={"rotation": 10.0, "padding_mode": "border"})


def test_a_checkpoint_without_the_new_run_keys_resumes(tmp_path):
    """A checkpoint written before decode_size, decode_aspect and gpu_decode existed holds none of them: they
    had their defaults, so the run resumes (to the uninterrupted run's records)."""
    from clnscl.train.checkpoint import load_checkpoint, save_checkpoint
    from clnscl.train.config import load_config
    from clnscl.train.loop import CoupledTrainer
    from tests.train.test_loop import TINY, without_timings

    over = [*TINY, "checkpoint_every=2"]
    full = CoupledTrainer(load_config(None, over), tmp_path / "full", log=lambda *_: None).run()
    CoupledTrainer(load_config(None, over), tmp_path / "cut", log=lambda *_: None).run(stop_after=4)
    path, state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for key in ("decode_size", "decode_aspect", "gpu_decode"):
        del state["run"][key]
    save_checkpoint(state, path)
    resumed = CoupledTrainer(load_config(None, over), tmp_path / "cut", log=lambda *_: None).run(resume=True)
    assert [without_timings(r) for r in resumed] == [without_timings(r) for r in full]
