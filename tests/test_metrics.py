"""cascade.training.metrics on images with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from cascade.training import metrics as M


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma + 0.5)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)


def texture(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Images of one stationary texture: band-limited coloured noise in [0.1, 0.9]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)
    x = _blur(x, 0.8) + 0.3 * _blur(torch.randn(n, 3, size, size, generator=g, dtype=torch.float64), 3.0)
    x = x / 3 + torch.tensor([0.45, 0.5, 0.4], dtype=torch.float64).view(1, 3, 1, 1)
    return x.clamp(0.1, 0.9)


def smooth(n: int, size: int = 64) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size, dtype=torch.float64),
                            torch.linspace(0, 1, size, dtype=torch.float64), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(3 * xx + 2 * yy)
    return torch.stack([torch.stack([base * (0.8 + 0.1 * c) + 0.02 * i for c in range(3)]) for i in range(n)])


# ---------------------------------------------------------------------------------------------


def test_identical_images():
    x = texture(4)
    assert math.isinf(float(M.psnr(x, x)))
    assert float(M.ssim(x, x)) == pytest.approx(1.0, abs=1e-12)
    swd = M.sliced_wasserstein(x, x)
    assert float(swd["mean"]) == pytest.approx(0.0, abs=1e-9)
    assert float(M.hf_energy_ratio(x, x)) == pytest.approx(1.0)
    # single images (3, H, W) and numpy inputs work too
    assert math.isinf(float(M.psnr(x[0], x[0].numpy())))


def test_psnr_constant_offset_matches_formula():
    x = texture(3)
    for offset in (0.01, 0.05, 0.1):
        expected = 10 * math.log10(1.0 / offset ** 2)
        assert float(M.psnr(x + offset, x)) == pytest.approx(expected, abs=1e-9)
        assert float(M.psnr(x * 255 + offset * 255, x * 255, data_range=255.0)) == pytest.approx(expected, abs=1e-9)
    per = M.psnr(x + torch.tensor([0.01, 0.1, 0.05]).view(3, 1, 1, 1).double(), x, reduction="none")
    np.testing.assert_allclose(per.numpy(), [40.0, 20.0, 10 * math.log10(400)], atol=1e-9)


def test_ssim_matches_reference_gaussian_ssim():
    """Independent reference: scipy Gaussian filter (11 taps, sigma 1.5), 'valid' region only."""
    a, b = texture(1, 48, seed=1)[0].numpy(), texture(1, 48, seed=2)[0].numpy() * 0.7 + 0.1

    def ref(x, y):
        filt = lambda z: ndimage.gaussian_filter(z, 1.5, truncate=5 / 1.5, mode="constant")[5:-5, 5:-5]  # noqa: E731
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        vals = []
        for ch in range(3):
            p, q = x[ch], y[ch]
            mp, mq = filt(p), filt(q)
            vp, vq, cpq = filt(p * p) - mp ** 2, filt(q * q) - mq ** 2, filt(p * q) - mp * mq
            s = ((2 * mp * mq + c1) * (2 * cpq + c2)) / ((mp ** 2 + mq ** 2 + c1) * (vp + vq + c2))
            vals.append(s.mean())
        return float(np.mean(vals))

    assert float(M.ssim(a, b)) == pytest.approx(ref(a, b), abs=1e-9)
    blurred = _blur(torch.from_numpy(a)[None], 1.0)[0].numpy()
    assert float(M.ssim(a, blurred)) == pytest.approx(ref(a, blurred), abs=1e-9)


def test_noise_vs_smooth():
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(8, 3, 64, 64, generator=g, dtype=torch.float64)
    sm = smooth(8)
    assert float(M.ssim(noise, sm)) < 0.1
    assert float(M.psnr(noise, sm)) < 15
    far = float(M.sliced_wasserstein(noise, sm)["mean"])
    near = float(M.sliced_wasserstein(sm[:4], sm[4:])["mean"])
    assert far > 200 and far > 5 * near


def test_blur_loses_high_frequencies_and_raises_swd():
    real = texture(32, seed=3)
    a, b = real[:16], real[16:]
    blurred = _blur(a, 1.5)
    ratio = float(M.hf_energy_ratio(blurred, a))
    assert ratio < 0.3
    assert float(M.hf_energy_ratio(a, b)) == pytest.approx(1.0, abs=0.1)
    swd_real = M.sliced_wasserstein(a, b)
    swd_blur = M.sliced_wasserstein(blurred, b)
    assert float(swd_blur["mean"]) > 2 * float(swd_real["mean"])
    assert float(swd_blur["per_level"][0]) > 2 * float(swd_real["per_level"][0])  # finest band most of all
    assert float(M.ssim(blurred, a)) < float(M.ssim(a, a))


def test_swd_levels_and_determinism():
    x, y = texture(4, 128, seed=4), texture(4, 128, seed=5)
    r1 = M.sliced_wasserstein(x, y, seed=7)
    r2 = M.sliced_wasserstein(x, y, seed=7)
    assert r1["levels"] == [128, 64, 32, 16]
    assert torch.equal(r1["per_level"], r2["per_level"]) and float(r1["mean"]) == float(r2["mean"])
    assert float(r1["mean"]) == pytest.approx(float(r1["per_level"].mean()))
    r3 = M.sliced_wasserstein(x, y, seed=8)
    assert not torch.equal(r1["per_level"], r3["per_level"])
    assert M.sliced_wasserstein(x[..., :64, :64], y[..., :64, :64])["levels"] == [64, 32, 16]
    # Sets of different sizes are compared at common quantiles.
    assert float(M.sliced_wasserstein(x[:3], y)["mean"]) > 0


def test_area_downsample():
    x = torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4).expand(2, 3, 4, 4)
    d = M.area_downsample(x)
    assert d.shape == (2, 3, 2, 2)
    np.testing.assert_allclose(d[0, 0].numpy(), [[2.5, 4.5], [10.5, 12.5]])
    assert M.area_downsample(x[0], 4).shape == (3, 1, 1)
    assert float(M.area_downsample(x[0], 4)[0, 0, 0]) == pytest.approx(7.5)
    with pytest.raises(ValueError):
        M.area_downsample(torch.zeros(3, 5, 4))


def test_laplacian_pyramid_reconstructs():
    x = texture(2, 64, seed=6)
    pyr = M.laplacian_pyramid(x, 4)
    assert [p.shape[-1] for p in pyr] == [64, 32, 16, 8]
    rec = pyr[-1]
    for band in reversed(pyr[:-1]):
        rec = band + M._pyr_up(rec, band.shape[-2:])
    torch.testing.assert_close(rec, x, atol=1e-12, rtol=0)
