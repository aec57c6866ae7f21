"""Generator-driven augmentations: deterministic given the generator, shards equal to rows of the whole batch,
per-sample randomness, geometry conventions, input errors."""

import pytest
import torch

from clnscl.train.augment import Augment
from tests.support.seeds import seeded


def test_augment_deterministic_given_generator_state(digits):
    x = digits[0][:64]
    aug = Augment()
    g = seeded(7)
    state = g.get_state()
    v1 = aug(x, g)
    v2 = aug(x, g)  # same generator, advanced: a fresh view
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(aug(x, g2), v1) and torch.equal(aug(x, g2), v2)
    assert not torch.equal(v1, v2)
    assert not torch.equal(aug(x, seeded(8)), v1)
    # the consumption depends only on the batch shape and on whether there is noise
    g3, g4 = seeded(1), seeded(1)
    Augment()(x, g3)
    Augment(rotation=0, jitter_p=0, noise_std=0.5, crop_scale=(1, 1))(x, g4)
    assert torch.equal(g3.get_state(), g4.get_state())


@pytest.mark.parametrize("noise_std", [0.0, 0.05])
def test_augment_shards_are_rows_of_the_whole_batch(digits, noise_std):
    """Under torchrun each process transforms its shard of the global batch: the same pixels as the
    corresponding rows of the whole batch, and the generator ends in the same state on every process."""
    x = digits[0][:50]
    aug = Augment(noise_std=noise_std, hflip_p=0.5)
    g = seeded(3)
    whole = aug.views(x, g)
    for offset, size in ((0, 25), (25, 25), (7, 13), (50, 0)):
        gs = seeded(3)
        part = aug.views(x[offset : offset + size], gs, batch_size=50, offset=offset)
        for v, w in zip(part, whole):
            torch.testing.assert_close(v, w[offset : offset + size], rtol=0, atol=1e-6)
        assert torch.equal(gs.get_state(), g.get_state())
    with pytest.raises(ValueError, match="batch_size=50"):
        aug(x[:10], seeded(0), batch_size=50, offset=45)


def test_augment_shape_range_and_per_sample_randomness(digits):
    x = digits[0][:1].expand(32, 1, 8, 8).contiguous()  # the same image 32 times
    out = Augment()(x, seeded(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    flat = out.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(32) * 1e9).min() > 1e-4  # every sample got its own parameters
    assert (out - x).abs().mean() > 0.02  # it does change the images
    wide = torch.rand(5, 3, 12, 20, generator=seeded(1))
    assert Augment(hflip_p=0.5, padding_mode="reflection")(wide, seeded(2)).shape == (5, 3, 12, 20)
    assert Augment()(wide.double(), seeded(2)).dtype == torch.float64


def test_augment_geometry_conventions():
    x = torch.rand(6, 3, 8, 8, generator=seeded(3))
    still = dict(crop_scale=(1, 1), crop_ratio=(1, 1), rotation=0, jitter_p=0, noise_std=0)
    assert torch.allclose(Augment(**still)(x, seeded(0)), x, atol=1e-6)  # full window, no rotation: identity
    assert torch.allclose(Augment(**still, hflip_p=1.0)(x, seeded(0)), x.flip(-1), atol=1e-6)
    # a quarter-area window is a 2x zoom: a constant image stays constant inside
    const = torch.full((4, 1, 8, 8), 0.5)
    assert torch.allclose(Augment(crop_scale=(0.25, 0.25), crop_ratio=(1, 1), rotation=0, jitter_p=0,
                                  noise_std=0)(const, seeded(0)), const, atol=1e-6)


def test_augment_rotation_is_rigid_on_non_square_images():
    # a blob 10 pixels right of the centre of a 33x65 image: a full-window rotation keeps it 10 pixels away
    h, w = 33, 65
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    cx, cy = (w - 1) / 2, (h - 1) / 2
    x = torch.exp(-((xx - cx - 10) ** 2 + (yy - cy) ** 2) / 4).expand(16, 1, h, w).contiguous()
    out = Augment(crop_scale=(1, 1), crop_ratio=(w / h, w / h), rotation=60, jitter_p=0, noise_std=0)(x, seeded(3))
    mass = out[:, 0].sum(dim=(1, 2))
    px = (out[:, 0] * xx).sum(dim=(1, 2)) / mass - cx
    py = (out[:, 0] * yy).sum(dim=(1, 2)) / mass - cy
    assert torch.allclose(torch.hypot(px, py), torch.full((16,), 10.0), atol=0.1)
    angles = torch.rad2deg(torch.atan2(py, px)).abs()
    assert angles.max() <= 60.5 and angles.max() > 20  # rotated, within the range


def test_augment_input_errors():
    aug = Augment()
    with pytest.raises(TypeError, match="Generator"):
        aug(torch.rand(2, 1, 8, 8), None)
    with pytest.raises(ValueError, match="B, C, H, W"):
        aug(torch.rand(1, 8, 8), seeded(0))
    with pytest.raises(ValueError, match="3 channels"):
        aug(torch.rand(2, 2, 8, 8), seeded(0))
    with pytest.raises(TypeError, match="floating"):
        aug(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), seeded(0))
    with pytest.raises(ValueError, match="crop_scale"):
        Augment(crop_scale=(0.0, 1.0))


def _torchvision_pipeline(x, u, cfg):
    """torchvision's ops composed in SimCLR's order on the parameters decoded from Augment's uniforms
    (full-image window: columns 0..21 are the crop's, 22 the angle's), sample by sample."""
    TF = pytest.importorskip("torchvision.transforms.v2.functional")
    t = 20
    out = []
    for i in range(len(x)):
        img, ui = x[i], u[i].tolist()
        if ui[t + 3] < cfg.hflip_p:
            img = TF.horizontal_flip(img)
        if ui[t + 4] < cfg.jitter_p:
            fns = []
            for j, (fn, s) in enumerate([(TF.adjust_brightness, cfg.brightness), (TF.adjust_contrast, cfg.contrast),
                                         (TF.adjust_saturation, cfg.saturation)]):
                lo = max(0.0, 1.0 - s)
                fns.append((fn, lo + (1.0 + s - lo) * ui[t + 5 + j]))
            fns.append((TF.adjust_hue, cfg.hue * (2.0 * ui[t + 8] - 1.0)))
            for k in sorted(range(4), key=lambda k: ui[t + 9 + k]):
                fn, f = fns[k]
                img = fn(img, f)
        if ui[t + 13] < cfg.grayscale_p:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if ui[t + 14] < cfg.blur_p:
            sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * ui[t + 15]
            img = TF.gaussian_blur(img, [5, 5], [sigma, sigma])
        if ui[t + 16] < cfg.solarize_p:
            img = TF.solarize(img, cfg.solarize_threshold)
        out.append(img)
    return torch.stack(out)


def test_augment_equals_torchvision_composed_on_its_parameters():
    """Flip, colour jitter in each sample's random order, grayscale, blur and solarize, on the parameters
    Augment drew, against torchvision's functional ops in SimCLR's order (a full-image window)."""
    x = torch.rand(40, 3, 9, 14, generator=seeded(5))
    aug = Augment(preset="simclr_imagenet", crop_scale=(1, 1), crop_ratio=(14 / 9, 14 / 9), blur_kernel=5,
                  solarize_p=0.3, solarize_threshold=0.6, hue=0.3, brightness=1.2)
    u = torch.rand(40, 37, generator=seeded(6))
    got = aug(x, seeded(6))
    torch.testing.assert_close(got, _torchvision_pipeline(x, u, aug.config), rtol=0, atol=1e-5)


def test_crop_windows_follow_torchvision_random_resized_crop():
    """The window's area fraction and aspect ratio follow torchvision's RandomResizedCrop (up to ten candidates,
    then the central fallback) on a wide image, where the fallback is common."""
    T = pytest.importorskip("torchvision.transforms.v2")
    h, w = 20, 60
    x = (torch.arange(w).float() / (w - 1)).expand(4000, 1, h, w)  # a ramp: the output row spans the window
    torch.manual_seed(0)
    rrc = T.RandomResizedCrop((h, w), scale=(0.08, 1.0))
    theirs = torch.tensor([rrc.make_params([torch.zeros(1, h, w)])["width"] for _ in range(4000)]).float()
    ours = Augment(preset="simclr_cifar", hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0)(x, seeded(1))
    # a ramp window [a, b] in pixels resampled at its pixel centres: the span of the output row is b − a − 1
    span = (ours[:, 0, 0, -1] - ours[:, 0, 0, 0]) * (w - 1) + 1
    assert abs(span.mean() - theirs.mean()) < 0.03 * theirs.mean()
    assert abs((span > w - 0.5).float().mean() - (theirs == w).float().mean()) < 0.03


@pytest.mark.parametrize("preset", ["simclr_imagenet", "digits"])
def test_a_canvas_row_is_augmented_as_its_image_alone(preset):
    """Images of different shapes on one canvas, each with its extent: every row equals Augment on that image
    by itself (its own height × width, the same parameters through batch_size/offset), resampled to the output
    size; the window never reads the canvas outside the image. With rotation (digits) the area brought in
    from outside is zero in both."""
    from clnscl.train.datasets import on_canvas

    shapes = [(9, 14), (14, 9), (11, 11), (6, 14), (14, 5)]
    images = [torch.rand(3, h, w, generator=seeded(10 + k)) for k, (h, w) in enumerate(shapes)]
    canvas, extent = map(torch.stack, zip(*(on_canvas(img, 14) for img in images)))
    canvas[:, :, :, :] += torch.where(canvas == 0, 5.0, 0.0)  # a loud canvas: any read of it would show
    aug = Augment(preset=preset, blur_kernel=3, noise_std=0.05)
    got = aug(canvas, seeded(3), extent=extent, size=(8, 8))
    assert got.shape == (5, 3, 8, 8) and got.max() <= 1.0
    if preset == "digits":  # rotation reads outside the image: compare with zeros there, as the alone case
        canvas = torch.stack([on_canvas(img, 14)[0] for img in images])
        got = aug(canvas, seeded(3), extent=extent, size=(8, 8))
    for k, img in enumerate(images):
        alone = aug(img[None], seeded(3), batch_size=5, offset=k, size=(8, 8))
        torch.testing.assert_close(got[k], alone[0], rtol=0, atol=2e-6)
    again = aug(canvas, seeded(3), extent=extent, size=(8, 8))
    assert torch.equal(again, got)


def test_a_canvas_needs_extents_inside_it_and_zero_padding():
    canvas = torch.rand(2, 3, 10, 10)
    with pytest.raises(ValueError, match="extent"):
        Augment()(canvas, seeded(0), extent=torch.tensor([[10, 11], [4, 4]]))
    with pytest.raises(ValueError, match="extent"):
        Augment()(canvas, seeded(0), extent=torch.tensor([[4, 4]]))
    with pytest.raises(ValueError, match="padding_mode"):
        Augment(padding_mode="reflection")(canvas, seeded(0), extent=torch.tensor([[4, 4], [10, 10]]))
    assert Augment()(canvas[:0], seeded(0), extent=torch.zeros(0, 2, dtype=torch.int64) + 1,
                     size=(4, 5)).shape == (0, 3, 4, 5)


def test_images_that_fill_their_canvas_may_rotate_with_any_padding():
    """The zero-padding rule is for images smaller than their canvas: full extents (decode_aspect = 1) behave
    as no extent at all, with every padding mode."""
    x = torch.rand(3, 3, 10, 10, generator=seeded(4))
    aug = Augment(padding_mode="reflection", rotation=20.0)
    full = aug(x, seeded(5), extent=torch.tensor([[10, 10]] * 3))
    torch.testing.assert_close(full, aug(x, seeded(5)), rtol=0, atol=1e-6)
