"""Sampling one cascade stage with a diffusers scheduler and noise that is passed in.

Only deterministic solvers are offered (DPM-Solver++, UniPC, DDIM with eta = 0): after the
initial noise they draw nothing, so the initial global-coordinate noise fixes the result.
All of their updates are element-wise in the image, which keeps painting local.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from cascade.model import CascadeDenoiser

SAMPLERS = ("dpmsolver++", "unipc", "ddim")


def training_scheduler() -> DDPMScheduler:
    """The noise schedule the model is trained with (and whose config ships with the weights)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
    )


def make_scheduler(name: str, train_config: dict) -> DDIMScheduler | DPMSolverMultistepScheduler | UniPCMultistepScheduler:
    """A few-step deterministic solver built from the training schedule's config."""
    common = {"timestep_spacing": "trailing"}
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(
            train_config, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", **common
        )
    if name == "unipc":
        return UniPCMultistepScheduler.from_config(train_config, final_sigmas_type="zero", **common)
    if name == "ddim":
        return DDIMScheduler.from_config(train_config, set_alpha_to_one=True, **common)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


BICUBIC_MARGIN = 2  # parent pixels bicubic 2x upsampling reads beyond each output pixel


def upsample_parent(parent: torch.Tensor, margin: int = BICUBIC_MARGIN) -> torch.Tensor:
    """Bicubic 2x upsampling of a parent window that carries `margin` extra pixels each side.

    Bicubic reads two pixels each way, so the margin makes the kept centre identical to the same
    pixels of a larger upsampled canvas. Returns the child-grid centre, clamped to [0, 1].
    """
    up = F.interpolate(parent, scale_factor=2, mode="bicubic", align_corners=False)
    m = 2 * margin
    return up[..., m : up.shape[-2] - m, m : up.shape[-1] - m].clamp(0, 1)


SMOOTH_ROUNDS = 3
# Child pixels each round of `smooth_back_project` can carry information: the 2x2 mean reads one
# pixel away, the bicubic upsampling of the error two parent pixels (four child pixels) away.
SMOOTH_REACH = SMOOTH_ROUNDS * 6


def smooth_back_project(child: torch.Tensor, parent: torch.Tensor, rounds: int = SMOOTH_ROUNDS) -> torch.Tensor:
    """Iterative back-projection (Irani & Peleg) with a bicubic kernel.

    Spreads each parent pixel's error smoothly instead of as a constant 2x2 block, so the exact
    per-block correction that follows (`back_project`) has almost nothing left to do and leaves
    no block pattern that deeper zooms would magnify.
    """
    for _ in range(rounds):
        error = parent - F.avg_pool2d(child, 2)
        child = (child + F.interpolate(error, scale_factor=2, mode="bicubic", align_corners=False)).clamp(0, 1)
    return child


def back_project(child: torch.Tensor, parent: torch.Tensor, iterations: int = 24) -> torch.Tensor:
    """Make the 2x2 area mean of `child` equal `parent` (cross-zoom consistency).

    Each 2x2 block is shifted by the one offset d with mean(clamp(block + d, 0, 1)) = parent.
    That mean grows monotonically with d, so bisection finds d for every block, including blocks
    where clamping would defeat a plain additive correction.
    """
    lo = torch.full_like(parent, -1.0)
    hi = torch.full_like(parent, 1.0)
    up = lambda d: F.interpolate(d, scale_factor=2, mode="nearest")  # noqa: E731
    for _ in range(iterations):
        mid = (lo + hi) / 2
        low = F.avg_pool2d((child + up(mid)).clamp(0, 1), 2) < parent
        lo, hi = torch.where(low, mid, lo), torch.where(low, hi, mid)
    return (child + up((lo + hi) / 2)).clamp(0, 1)


def finish_stage(canvas: torch.Tensor, parent: torch.Tensor, halo: int) -> torch.Tensor:
    """Children of a painted canvas: consistent with their parent, halo cut away.

    `canvas` (B, 3, H, W) is the painted child grid with `halo` pixels of context each side,
    `parent` (B, 3, H/2, W/2) the parent pixels under it. Smooth corrections over the whole canvas
    first (no 2x2 blocks), then the exact per-block one on the kept centre.
    """
    canvas = smooth_back_project(canvas, parent)
    hp = halo // 2
    centre = parent[..., hp : parent.shape[-2] - hp, hp : parent.shape[-1] - hp]
    return back_project(canvas[..., halo : canvas.shape[-2] - halo, halo : canvas.shape[-1] - halo], centre)


def parent_context(model: CascadeDenoiser, parent_window: torch.Tensor, margin: int | None = None) -> torch.Tensor:
    """The bicubic-upsampled parent under the canvas, from a window with the model's context margin
    (or `margin`)."""
    cut = (model.context_margin if margin is None else margin) - BICUBIC_MARGIN
    return upsample_parent(parent_window[..., cut : parent_window.shape[-2] - cut, cut : parent_window.shape[-1] - cut])


@torch.inference_mode()
def sample_stage(
    model: CascadeDenoiser,
    scheduler,
    parent_window: torch.Tensor,
    parent_log2_mpp: torch.Tensor,
    log2_mpp: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    margin: int | None = None,
    guide: torch.Tensor | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """Paint child canvases from the parent under them.

    Args:
        model: the denoiser.
        scheduler: a deterministic diffusers solver (see `make_scheduler`).
        parent_window: parent pixels under the canvas plus `model.context_margin` each side, in
            [0, 1], (B, 3, H/2 + 2M, W/2 + 2M).
        parent_log2_mpp: parent ground resolution per window row, (B, H/2 + 2M).
        log2_mpp: child ground resolution per canvas row, (B, H).
        noise: initial standard normal noise, (B, 3, H, W), from `cascade.noise`.
        steps: number of solver steps.
        margin: the window's margin if not the model's `context_margin` (training only: painting
            with less context is not seamless).
        guide: an image to start from instead of pure noise, (B, 3, H, W) in [0, 1] (the exemplar
            reference): it is noised to the level of `strength` (1 is pure noise, as without a
            guide) and the solver runs the remaining steps, as in SDEdit (arXiv 2108.01073).
        strength: share of the solver's steps run from the noised guide.

    Returns:
        Child canvases in [0, 1], (B, 3, H, W).
    """
    scheduler.set_timesteps(steps, device=parent_window.device)
    parent_up = parent_context(model, parent_window, margin)
    # 1. The context encoder reads the wide parent window once for all steps.
    context = model.encode_context(parent_window, parent_log2_mpp, margin)
    noise = noise.to(parent_window.device, torch.float32)
    timesteps = scheduler.timesteps
    if guide is None:
        # 2. x_T ~ N(0, I) scaled to the solver's initial sigma; the noise is drawn by the caller.
        x = noise * scheduler.init_noise_sigma
    else:
        # 2. The guide's residual, noised to the step where the solver joins in.
        begin = min(max(int(round(steps * (1 - strength))), 0), steps - 1)
        timesteps = timesteps[begin:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        residual = (guide.to(parent_up) - parent_up) * model.config.residual_scale
        x = scheduler.add_noise(residual, noise, timesteps[:1])
    for t in timesteps:
        # 3. The model predicts v (arXiv 2202.00512) for the scaled residual at step t.
        model_in = scheduler.scale_model_input(x, t)
        out = model(model_in, t, parent_up, log2_mpp, context).float()
        # 4. The solver moves x_t to x_{t-1} with no noise of its own.
        x = scheduler.step(out, t, x).prev_sample
    # 5. The sample is a residual over the upsampled parent.
    return (parent_up + x / model.config.residual_scale).clamp(0, 1)
