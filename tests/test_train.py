"""Training on tiny synthetic data: the loss goes down, checkpoints resume exactly, export loads in the server."""

import numpy as np
import torch

from cascade.painter import MetatilePainter, model_digest
import torch.nn.functional as F

from cascade.model import CascadeDenoiser
from cascade.sampler import training_scheduler
from cascade.training.train import TrainConfig, degrade_parent, diffusion_loss, export_weights, train
from tests.conftest import TINY_CONFIG


def synthetic_patches(n: int = 64, size: int = 32, seed: int = 0):
    """Smooth colour fields with stripes: structure a denoiser can learn in a few dozen steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        freq, phase = rng.uniform(2, 6), rng.uniform(0, 6.28)
        base = rng.uniform(0.2, 0.8, 3)
        stripes = 0.15 * np.sin(2 * np.pi * freq * (xx + 0.5 * yy) + phase)
        out[i] = np.clip((base[None, None] + stripes[..., None]) * 255, 0, 255).astype(np.uint8)
    return out, rng.uniform(0.3, 30, n).astype(np.float32)


def config(steps):
    return TrainConfig(steps=steps, batch_size=8, lr=2e-3, warmup=5, checkpoint_every=10, seed=1)


def fixed_loss(model, child, mpp) -> float:
    """Loss on one fixed batch with fixed timesteps and noise: comparable before and after training."""
    x = torch.from_numpy(child).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return diffusion_loss(model, training_scheduler(), x, F.avg_pool2d(x, 2), torch.log2(torch.from_numpy(mpp)),
                              TrainConfig(), torch.Generator().manual_seed(0)).item()


def test_loss_goes_down(tmp_path):
    child, mpp = synthetic_patches()
    torch.manual_seed(1)
    before = fixed_loss(CascadeDenoiser(**TINY_CONFIG), child, mpp)
    model, _, losses = train(child, mpp, tmp_path / "run", config(150), TINY_CONFIG, progress=False)
    assert len(losses) == 150 and np.isfinite(losses).all()
    after = fixed_loss(model, child, mpp)
    assert after < 0.85 * before, (before, after)


def test_checkpoint_resumes_exactly(tmp_path):
    child, mpp = synthetic_patches(32)
    straight, straight_ema, _ = train(child, mpp, tmp_path / "a", config(20), TINY_CONFIG, progress=False)
    train(child, mpp, tmp_path / "b", config(20), TINY_CONFIG, progress=False, stop_at=10)  # "interrupted"
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 10 and {"model", "optimizer", "ema", "version"} <= set(state)
    resumed, resumed_ema, losses = train(child, mpp, tmp_path / "b", config(20), TINY_CONFIG, progress=False)
    assert len(losses) == 10  # only the remaining steps ran
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    for a, b in zip(straight_ema.shadow_params, resumed_ema.shadow_params):
        assert torch.allclose(a, b, atol=1e-6)


def test_export_is_what_the_server_loads(tmp_path):
    child, mpp = synthetic_patches(16)
    model, ema, _ = train(child, mpp, tmp_path / "run", config(5), TINY_CONFIG, progress=False)
    export_weights(model, ema, tmp_path / "weights", {"sampler": "ddim", "steps": 3})
    painter = MetatilePainter.from_pretrained(tmp_path / "weights")
    assert (painter.sampler, painter.steps) == ("ddim", 3)
    ema.copy_to(model.parameters())
    assert model_digest(painter.model) == model_digest(model)


def test_parent_degradation_is_mild_and_random():
    parent = torch.rand(4, 3, 16, 16)
    cfg = TrainConfig()
    out = degrade_parent(parent, cfg, torch.Generator().manual_seed(0))
    assert out.shape == parent.shape and out.min() >= 0 and out.max() <= 1
    assert 0 < (out - parent).abs().mean() < 0.2
    assert not torch.equal(out, degrade_parent(parent, cfg, torch.Generator().manual_seed(1)))
    assert torch.equal(degrade_parent(parent, TrainConfig(parent_blur_max=0, parent_noise_max=0), torch.Generator()), parent)
