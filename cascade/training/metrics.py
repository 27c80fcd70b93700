"""Image quality metrics for the cascade, in pure torch (no downloads, no pretrained networks).

All inputs are float images in [0, 1], shaped (B, 3, H, W) or (3, H, W) (a single image is
treated as a batch of one); numpy arrays are accepted too. Results are torch float64 tensors.

* `psnr` -- 10 log10(1 / MSE) per image (data range 1), ``inf`` for identical images.
* `ssim` -- standard SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
  K2 = 0.03, data range 1, computed **per RGB channel and averaged over channels** and over the
  'valid' window positions (no padding), like the reference MATLAB code. Images need H, W >= 11.
* `area_downsample` -- exact `factor` x `factor` block mean (what a parent tile is of its child).
* `high_frequency_energy` -- mean squared value of the finest Laplacian-pyramid band
  (image minus the blur-downsampled-upsampled image, Burt-Adelson 5-tap binomial filter);
  `hf_energy_ratio(generated, real)` = energy(generated) / energy(real) (< 1: too smooth).
* `sliced_wasserstein` -- SWD between Laplacian-pyramid patch descriptors as in Progressive
  GAN (Karras et al., arXiv 1710.10196, appendix D), see its docstring.

`psnr`/`ssim` reduce over the batch with ``reduction="mean"`` (default) or return per-image
values with ``reduction="none"``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_BINOMIAL5 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16.0


def _as_batch(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if not t.is_floating_point():
        raise TypeError("metrics take float images in [0, 1]")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) or (C, H, W), got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_batch(a), _as_batch(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b.to(a.device)


def _reduce(v: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return v.mean()
    if reduction == "none":
        return v
    raise ValueError("reduction must be 'mean' or 'none'")


def psnr(a, b, data_range: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, 10 log10(data_range**2 / MSE), per image.

    Identical images give ``inf``; with ``reduction="mean"`` the per-image values are averaged
    (so one identical pair makes the mean ``inf``)."""
    a, b = _pair(a, b)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    val = 10.0 * torch.log10(data_range ** 2 / mse)  # mse == 0 -> inf
    return _reduce(val, reduction)


def _gaussian_window(size: int, sigma: float, device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _sep_conv(x: torch.Tensor, k1d: torch.Tensor, padding_mode: str | None = None) -> torch.Tensor:
    """Depthwise separable convolution of (B, C, H, W) with a 1-D kernel; 'valid' unless padded."""
    c = x.shape[1]
    n = k1d.numel()
    if padding_mode is not None:
        p = n // 2
        x = F.pad(x, (p, p, p, p), mode=padding_mode)
    kh = k1d.view(1, 1, n, 1).expand(c, 1, n, 1).to(x)
    kw = k1d.view(1, 1, 1, n).expand(c, 1, 1, n).to(x)
    return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)


def ssim(a, b, data_range: float = 1.0, window: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03, reduction: str = "mean") -> torch.Tensor:
    """Structural similarity (Gaussian window 11x11, sigma 1.5), per channel, channel-averaged.

    1 for identical images, ~0 for unrelated ones. See the module docstring."""
    a, b = _pair(a, b)
    if min(a.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window} px")
    g = _gaussian_window(window, sigma, a.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_a, mu_b = _sep_conv(a, g), _sep_conv(b, g)
    saa = _sep_conv(a * a, g) - mu_a ** 2
    sbb = _sep_conv(b * b, g) - mu_b ** 2
    sab = _sep_conv(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2)
    return _reduce((num / den).flatten(1).mean(1), reduction)


def area_downsample(x, factor: int = 2) -> torch.Tensor:
    """Exact `factor` x `factor` block mean; H and W must be multiples of `factor`.
    Keeps the input's rank ((3, H, W) in, (3, H/f, W/f) out) and dtype (float64 for numpy)."""
    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    if not t.is_floating_point():
        t = t.double()
    squeeze = t.ndim == 3
    t4 = t.unsqueeze(0) if squeeze else t
    if t4.shape[-1] % factor or t4.shape[-2] % factor:
        raise ValueError(f"size {tuple(t4.shape[-2:])} is not a multiple of {factor}")
    out = F.avg_pool2d(t4, factor)
    return out[0] if squeeze else out


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur with the 5-tap binomial filter (mirror borders), keep every other pixel (cv2.pyrDown)."""
    return _sep_conv(x, _BINOMIAL5, "reflect")[..., ::2, ::2]


def _pyr_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-insertion upsampling to `size` then 4x the binomial blur (cv2.pyrUp)."""
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, size[0], size[1])
    up[..., ::2, ::2] = x
    return _sep_conv(up, _BINOMIAL5 * 2.0, "reflect")  # 2 per axis = 4 in 2-D


def laplacian_pyramid(x, levels: int) -> list[torch.Tensor]:
    """Laplacian pyramid [finest band, ..., coarsest Gaussian level] of (B, C, H, W) images
    (Burt-Adelson; as in Progressive GAN's SWD code). H, W must be divisible by 2**(levels-1)."""
    t = _as_batch(x)
    pyr = [t]
    for _ in range(1, levels):
        down = _pyr_down(pyr[-1])
        pyr[-1] = pyr[-1] - _pyr_up(down, pyr[-1].shape[-2:])
        pyr.append(down)
    return pyr


def high_frequency_energy(x) -> torch.Tensor:
    """Mean squared value of the finest Laplacian band (over batch, channels and pixels)."""
    t = _as_batch(x)
    band = t - _pyr_up(_pyr_down(t), t.shape[-2:])
    return (band ** 2).mean()


def hf_energy_ratio(generated, real) -> torch.Tensor:
    """high_frequency_energy(generated) / high_frequency_energy(real): ~1 when the generator
    reproduces the real fine-detail energy, < 1 when it is too smooth, > 1 when too noisy."""
    return high_frequency_energy(generated) / high_frequency_energy(real)


def _descriptors(level: torch.Tensor, nhood: int, per_image: int, gen: torch.Generator) -> torch.Tensor:
    """`per_image` random nhood x nhood x C neighbourhoods of each image: (N, C, nhood, nhood)."""
    b, c, h, w = level.shape
    r = nhood // 2
    ys = torch.randint(r, h - r, (b, per_image), generator=gen)
    xs = torch.randint(r, w - r, (b, per_image), generator=gen)
    off = torch.arange(-r, r + 1)
    yy = (ys[..., None] + off).to(level.device)  # (B, n, k)
    xx = (xs[..., None] + off).to(level.device)
    bi = torch.arange(b, device=level.device).view(b, 1, 1, 1)
    # level[b, :, y, x] for every (b, n, ky, kx): index -> (B, n, k, k, C)
    patches = level.permute(0, 2, 3, 1)[bi, yy[..., :, None], xx[..., None, :]]
    return patches.reshape(b * per_image, nhood, nhood, c).permute(0, 3, 1, 2)


def _w1_sorted(pa: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
    """Mean over rows (directions) of the 1-D Wasserstein-1 distance between the sorted rows of
    pa (D, Na) and pb (D, Nb); unequal sizes are compared at common quantiles."""
    na, nb = pa.shape[1], pb.shape[1]
    if na != nb:
        k = max(na, nb)
        q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        pa = pa[:, (q * na).long().clamp_max(na - 1).to(pa.device)]
        pb = pb[:, (q * nb).long().clamp_max(nb - 1).to(pb.device)]
    return (pa - pb).abs().mean()


def sliced_wasserstein(
    generated,
    real,
    nhood_size: int = 7,
    nhoods_per_image: int = 128,
    dir_repeats: int = 4,
    dirs_per_repeat: int = 128,
    min_res: int = 16,
    max_levels: int = 4,
    seed: int = 0,
) -> dict[str, object]:
    """Sliced Wasserstein distance between Laplacian-pyramid patch descriptors (Progressive GAN).

    For each image set: a Laplacian pyramid with up to `max_levels` levels, the coarsest at
    least `min_res` px (for 128 px images: 128, 64, 32, 16); at each level `nhoods_per_image`
    random `nhood_size` x `nhood_size` x 3 neighbourhoods per image, flattened to 147-d
    descriptors. Each colour channel is normalised to zero mean and unit std **per level over
    the union of both sets** (the reference code normalises each set on its own, which hides
    global contrast/colour differences; the union keeps e.g. a blurred set's lost band energy
    visible). SWD at a level is the mean over `dir_repeats` x `dirs_per_repeat` random unit
    directions of the 1-D Wasserstein-1 distance between the projected descriptor sets (sorted
    projections; compared at common quantiles if the sets differ in size).

    Returned values are **multiplied by 1e3**, as the paper reports them (its tables give
    SWD x 10^3). Deterministic given `seed`: neighbourhood positions come from a generator seeded
    with `seed` for each set (so identical sets give exactly 0) and directions from `seed` + 1.

    Returns ``{"levels": [px size of each level, finest first], "per_level": tensor (L,) x1e3,
    "mean": scalar tensor x1e3}``.
    """
    a, b = _as_batch(generated), _as_batch(real)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"image shapes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
    b = b.to(a.device)
    size = min(a.shape[-2:])
    levels = 1
    while levels < max_levels and size // 2 ** levels >= min_res and size % 2 ** levels == 0:
        levels += 1
    if size < nhood_size:
        raise ValueError("images smaller than the neighbourhood")
    pyr_a, pyr_b = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    dir_gen = torch.Generator().manual_seed(seed + 1)
    per_level = []
    for la, lb in zip(pyr_a, pyr_b):
        da = _descriptors(la, nhood_size, nhoods_per_image, torch.Generator().manual_seed(seed))
        db = _descriptors(lb, nhood_size, nhoods_per_image, torch.Generator().manual_seed(seed))
        both = torch.cat([da, db])
        mean = both.mean(dim=(0, 2, 3), keepdim=True)
        std = both.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-12)
        da = ((da - mean) / std).flatten(1)
        db = ((db - mean) / std).flatten(1)
        dists = []
        for _ in range(dir_repeats):
            dirs = torch.randn(da.shape[1], dirs_per_repeat, generator=dir_gen, dtype=torch.float64).to(da.device)
            dirs = dirs / dirs.norm(dim=0, keepdim=True)
            # (directions, descriptors), contiguous along the sorted axis
            pa = torch.sort((dirs.T @ da.T).contiguous(), dim=1).values
            pb = torch.sort((dirs.T @ db.T).contiguous(), dim=1).values
            dists.append(_w1_sorted(pa, pb))
        per_level.append(torch.stack(dists).mean())
    per_level_t = torch.stack(per_level).cpu() * 1e3
    return {
        "levels": [int(l.shape[-1]) for l in pyr_a],
        "per_level": per_level_t,
        "mean": per_level_t.mean(),
    }


__all__ = [
    "area_downsample",
    "high_frequency_energy",
    "hf_energy_ratio",
    "laplacian_pyramid",
    "psnr",
    "sliced_wasserstein",
    "ssim",
]
