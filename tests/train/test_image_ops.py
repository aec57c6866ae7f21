"""Each batched image operation equals torchvision.transforms.v2.functional on every sample's own parameter
(fresh random images, odd non-square sizes, one and three channels, float32 and float64), and the `Augment`
pipeline built from them equals torchvision's ops composed in its order on the parameters it drew."""
import pytest
import torch

from clnscl.train import image_ops as ops
from tests.support.seeds import seeded

TF = pytest.importorskip("torchvision.transforms.v2.functional")


def _images(b=5, c=3, h=13, w=19, dtype=torch.float32, seed=0):
    x = torch.rand(b, c, h, w, generator=seeded(seed), dtype=torch.float64)
    x[0] = x[0, :1]  # a gray sample: hue and saturation have nothing to act on
    x[1, :, :4] = 1.0  # saturated pixels: the clamps matter
    return x.to(dtype)


def _per_sample(fn, x, params, **kw):
    return torch.stack([fn(x[i], float(p), **kw) for i, p in enumerate(params)])


def _tol(dtype):
    return dict(rtol=0, atol=1e-12 if dtype == torch.float64 else 2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name,ours,theirs,params", [
    ("brightness", ops.adjust_brightness, TF.adjust_brightness, [0.0, 0.3, 1.0, 1.4, 1.8]),
    ("contrast", ops.adjust_contrast, TF.adjust_contrast, [0.0, 0.6, 1.0, 1.3, 1.8]),
    ("saturation", ops.adjust_saturation, TF.adjust_saturation, [0.0, 0.6, 1.0, 1.3, 1.8]),
])
def test_blend_ops_equal_torchvision_per_sample(name, ours, theirs, params, c, dtype):
    x = _images(c=c, dtype=dtype)
    f = torch.tensor(params, dtype=dtype)
    torch.testing.assert_close(ours(x, f), _per_sample(theirs, x, f), **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1, 3])
def test_hue_equals_torchvision_per_sample(c, dtype):
    x = _images(b=7, c=c, dtype=dtype, seed=1)
    x[2] = torch.tensor([1.0, 0.0, 0.0], dtype=dtype).view(-1, 1, 1)[:c]  # pure red: the hue's wrap-around
    f = torch.tensor([-0.5, -0.2, 0.05, 0.0, 0.1, 0.37, 0.5], dtype=dtype)
    # torchvision's hue runs in float32 whatever the input's dtype
    torch.testing.assert_close(ours := ops.adjust_hue(x, f), _per_sample(TF.adjust_hue, x, f), rtol=0, atol=2e-6)
    assert ours.dtype == dtype


@pytest.mark.parametrize("c", [1, 3])
def test_grayscale_and_solarize_equal_torchvision(c):
    x = _images(c=c, dtype=torch.float64, seed=2)
    torch.testing.assert_close(ops.grayscale(x), TF.rgb_to_grayscale(x, num_output_channels=c), rtol=0, atol=1e-12)
    for threshold in (0.0, 0.37, 0.5, 1.0):
        assert torch.equal(ops.solarize(x, threshold), TF.solarize(x, threshold))


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 9])
@pytest.mark.parametrize("c", [1, 3])
def test_gaussian_blur_equals_torchvision_per_sample(kernel_size, c):
    x = _images(c=c, h=11, w=17, dtype=torch.float64, seed=3)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    want = torch.stack([TF.gaussian_blur(x[i], [kernel_size, kernel_size], [float(s), float(s)])
                        for i, s in enumerate(sigma)])
    torch.testing.assert_close(ops.gaussian_blur(x, sigma, kernel_size), want, rtol=0, atol=1e-12)


def test_gaussian_blur_refuses_even_or_oversized_kernels():
    x = torch.rand(2, 3, 6, 6)
    with pytest.raises(ValueError, match="kernel_size"):
        ops.gaussian_blur(x, torch.ones(2), 4)
    with pytest.raises(ValueError, match="larger"):
        ops.gaussian_blur(x, torch.ones(2), 13)


@pytest.mark.parametrize("size", [(13, 19), (32, 32), (7, 5)])
@pytest.mark.parametrize("c", [1, 3])
def test_resized_crop_of_whole_pixel_windows_equals_torchvision(size, c):
    """Whole-pixel windows, up- and down-sampled: torchvision's bilinear resized_crop without antialiasing."""
    x = _images(b=6, c=c, h=13, w=19, dtype=torch.float64, seed=4)
    boxes = [(0, 0, 13, 19), (2, 3, 7, 9), (5, 0, 8, 19), (0, 11, 13, 8), (6, 10, 1, 1), (3, 4, 10, 15)]
    top, left, height, width = (torch.tensor(v, dtype=torch.float64) for v in zip(*boxes))
    got = ops.resized_crop(x, top, left, height, width, size)
    want = torch.stack([TF.resized_crop(x[i], *box, list(size), antialias=False) for i, box in enumerate(boxes)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # the horizontal flip of the window is torchvision's hflip of the crop
    flipped = ops.resample(x, ops.window_grid(top, left, height, width, (13, 19), size, flip=-torch.ones(6)))
    torch.testing.assert_close(flipped, TF.horizontal_flip(want), rtol=0, atol=1e-12)


@pytest.mark.parametrize("c", [1, 3])
def test_mix_is_each_blend_op_to_the_bit(c):
    """One `mix` pass with per-sample coefficients is brightness, contrast, saturation or the identity,
    exactly, sample by sample."""
    x = _images(b=8, c=c, seed=5)
    f = torch.rand(8, generator=seeded(6)) * 1.8
    kind = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # brightness, contrast, saturation, identity
    gray_sat = (kind == 2) & (c == 1)  # saturation does nothing to one channel: the identity's coefficients
    a = torch.where((kind == 3) | gray_sat, 1.0, f)
    b = torch.where(kind == 1, 1.0 - f, 0.0)
    cc = torch.where((kind == 2) & ~gray_sat, 1.0 - f, 0.0)
    got = ops.mix(x, a, b, cc)
    want = [ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation, lambda v, _: v.clone()]
    for i in range(8):
        assert torch.equal(got[i], want[int(kind[i])](x[i:i + 1], f[i:i + 1])[0]), i
