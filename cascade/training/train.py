"""Train the cascade denoiser on (parent, child) pairs made by area-downsampling real imagery.

    python -m cascade.training.train --data build/data/train.npz --run-dir runs/main --steps 20000
    python -m cascade.training.train ... --export cascade/weights    # write EMA weights for the server

Each step: child patches at a known ground resolution, parents = exact 2x2 area means,
parents degraded a little (blur, noise) as in cascaded diffusion models (arXiv 2106.15282) so
the cascade tolerates generated parents, then v-prediction MSE on the scaled residual
child - upsample(parent). Checkpoints keep step, weights, optimizer and EMA; a run resumes from
its checkpoint. bf16 autocast on GPU, plain fp32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from cascade.training.data import dihedral, load_shards
from cascade.model import CascadeDenoiser
from cascade.sampler import (BICUBIC_MARGIN, back_project, make_scheduler, sample_stage, smooth_back_project,
                             training_scheduler, upsample_parent)

log = logging.getLogger("cascade.training.train")
CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    steps: int = 20_000
    batch_size: int = 16
    lr: float = 3e-4
    warmup: int = 500
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    seed: int = 0
    parent_blur_max: float = 0.6  # Gaussian sigma in parent pixels, drawn uniformly in [0, max]
    parent_noise_max: float = 0.02  # noise std in [0, 1] units, drawn uniformly in [0, max]
    # Parent context each side of a patch, mirrored, in parent pixels (a multiple of 8): the
    # model's full `context_margin` by default; less trains faster (zero padding beyond it).
    context_pad: int = -1
    # Train on the parents the cascade really produces: from this step on, this fraction of each
    # batch gets a parent painted by the model itself from the grandparent (`own_parent_steps`
    # solver steps), and a target that is the real child back-projected onto that parent.
    own_parent_start: int = 2000
    own_parent_fraction: float = 0.5
    own_parent_steps: int = 2


def degrade_parent(parent: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Condition augmentation: random mild blur and noise, per image, so generated parents look in-distribution."""
    b = parent.shape[0]
    sigma = torch.rand(b, generator=generator) * cfg.parent_blur_max
    radius = 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (offsets[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    kernels = (kernels / kernels.sum(1, keepdim=True)).to(parent.device)
    padded = F.pad(parent, (radius,) * 4, mode="replicate")
    c = parent.shape[1]
    # Separable blur with a different kernel per image: fold the batch into channels.
    x = padded.reshape(1, b * c, *padded.shape[-2:])
    kh = kernels.repeat_interleave(c, 0)[:, None, None, :]
    kv = kernels.repeat_interleave(c, 0)[:, None, :, None]
    x = F.conv2d(F.conv2d(x, kh, groups=b * c), kv, groups=b * c).reshape_as(parent)
    noise_std = (torch.rand(b, generator=generator) * cfg.parent_noise_max).to(parent.device)
    noise = torch.randn(parent.shape, generator=generator).to(parent.device)
    return (x + noise * noise_std[:, None, None, None]).clamp(0, 1)


def training_batch(child: np.ndarray | torch.Tensor, m_per_px: np.ndarray | torch.Tensor, batch_size: int,
                   rng: np.random.Generator):
    """A random batch: children in [0, 1] under a random dihedral transform, their exact 2x2-mean
    parents, m/px. `child` (N, P, P, 3) uint8 and `m_per_px` may live on the GPU already: the batch
    is then made there, with no copy from the host."""
    idx = rng.choice(len(child), size=min(batch_size, len(child)), replace=False)
    if isinstance(child, np.ndarray):
        child, m_per_px = torch.from_numpy(child), torch.from_numpy(np.asarray(m_per_px, np.float32))
    sel = torch.from_numpy(idx).to(child.device)
    x = child[sel].permute(0, 3, 1, 2).float().div_(255.0)
    x = dihedral(x, int(rng.integers(8))).contiguous()
    return x, F.avg_pool2d(x, 2), m_per_px[sel].float()


def mirror_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Half-sample symmetric padding of the last two axes by `pad` (any size; repeats the mirror)."""
    def index(n: int) -> torch.Tensor:
        i = torch.arange(-pad, n + pad, device=x.device) % (2 * n)
        return torch.where(i < n, i, 2 * n - 1 - i)

    return x.index_select(-2, index(x.shape[-2])).index_select(-1, index(x.shape[-1]))


def stage_inputs(model: CascadeDenoiser, parent: torch.Tensor, pad: int | None = None):
    """What a stage is conditioned on for patches without neighbours: the parent mirrored by the
    context margin (or `pad`), and its bicubic upsampling on the child grid."""
    pad = model.context_margin if pad is None or pad < 0 else pad
    window = mirror_pad(parent, pad)
    parent_up = upsample_parent(mirror_pad(parent, BICUBIC_MARGIN))
    return window, parent_up, pad


@torch.no_grad()
def own_parents(model: CascadeDenoiser, child: torch.Tensor, log2_mpp: torch.Tensor, cfg: TrainConfig,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Parents painted by the model from the grandparents, and the real children back-projected
    onto them (real detail, consistent with what the cascade would condition on)."""
    parent = F.avg_pool2d(child, 2)
    grandparent = F.avg_pool2d(parent, 2)
    was_training = model.training
    model.eval()
    window, _, pad = stage_inputs(model, grandparent, cfg.context_pad)
    scheduler = make_scheduler("dpmsolver++", dict(training_scheduler().config))
    noise = torch.randn(parent.shape, generator=generator).to(child.device)
    parent_log2 = log2_mpp + 1
    with torch.autocast(device_type=child.device.type, dtype=torch.bfloat16, enabled=child.device.type == "cuda"):
        painted = sample_stage(model, scheduler, window, (parent_log2 + 1)[:, None].expand(-1, window.shape[-2]),
                               parent_log2[:, None].expand(-1, parent.shape[-2]), noise, cfg.own_parent_steps,
                               margin=pad)
    model.train(was_training)
    painted = back_project(smooth_back_project(painted.float().clone(), grandparent), grandparent)
    target = back_project(smooth_back_project(child, painted), painted)
    return painted, target


def diffusion_loss(model: CascadeDenoiser, scheduler, child, parent, log2_mpp, cfg: TrainConfig, generator) -> torch.Tensor:
    """v-prediction MSE on the scaled residual over the (degraded) upsampled parent."""
    window, cond, pad = stage_inputs(model, degrade_parent(parent, cfg, generator), cfg.context_pad)
    x0 = (child - cond) * model.config.residual_scale
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t)
    with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=x0.device.type == "cuda"):
        context = model.encode_context(window, log2_mpp + 1, margin=pad)
        pred = model(noisy, t, cond, log2_mpp, context)
    return F.mse_loss(pred.float(), target)


def save_checkpoint(path: Path, step: int, model, optimizer, ema, cfg: TrainConfig) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    state = {
        "version": CHECKPOINT_VERSION,
        "step": step,
        "model_config": dict(model.config),
        "train_config": asdict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": ema.state_dict(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def export_weights(model: CascadeDenoiser, ema: EMAModel, out_dir: Path, sampler: dict | None = None) -> None:
    """Save the EMA weights with `save_pretrained` (safetensors) plus the noise schedule."""
    export = CascadeDenoiser.from_config(model.config)
    ema.copy_to(export.parameters())
    export.save_pretrained(str(out_dir), safe_serialization=True)
    training_scheduler().save_pretrained(str(out_dir))
    sampler_path = out_dir / "sampler.json"
    if sampler is not None or not sampler_path.exists():
        sampler_path.write_text(json.dumps(sampler or {"sampler": "dpmsolver++", "steps": 4}, indent=2) + "\n")


def train(
    child: np.ndarray,
    m_per_px: np.ndarray,
    run_dir: Path,
    cfg: TrainConfig,
    model_config: dict | None = None,
    device: str = "cpu",
    progress: bool = True,
    stop_at: int | None = None,
    time_limit_s: float | None = None,
    init: Path | None = None,
) -> tuple[CascadeDenoiser, EMAModel, list[float]]:
    """Train (or resume) in `run_dir` towards `cfg.steps`.

    A new run starts from the weights in `init` (a `save_pretrained` directory such as the
    shipped `cascade/weights`) when given, else from `model_config`. `stop_at` (a step) or
    `time_limit_s` end this call early with a checkpoint, for short resumable runs; the next
    call continues exactly where this one stopped.
    Returns the model, its EMA and the per-step losses of this call.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.exists() else None
    if state is not None:
        model = CascadeDenoiser.from_config(state["model_config"])
        model.load_state_dict(state["model"])
    elif init is not None:
        model = CascadeDenoiser.from_pretrained(str(init), low_cpu_mem_usage=False)
        log.info("new run from the weights in %s", init)
    else:
        model = CascadeDenoiser(**(model_config or {}))
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, use_ema_warmup=True)
    start = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        start = state["step"]
        log.info("resumed %s at step %d", ckpt_path, start)
    ema.to(device)
    scheduler = training_scheduler()
    # The whole patch set goes to the device once (uint8; ~0.6 GB for 12k patches of 128 px).
    data = torch.from_numpy(child).to(device)
    mpp = torch.from_numpy(np.asarray(m_per_px, np.float32)).to(device)
    lr_at = lambda s: cfg.lr * min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0)))  # noqa: E731

    losses: list[float] = []
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc="train", disable=not progress)
    t0 = time.perf_counter()
    for step in bar:
        # Randomness is a function of (seed, step): a resumed run continues exactly as an uninterrupted one.
        rng = np.random.default_rng([cfg.seed, step])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        batch_child, batch_parent, batch_mpp = (t.to(device) for t in training_batch(data, mpp, cfg.batch_size, rng))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        log2_mpp = torch.log2(batch_mpp)
        n_own = int(round(cfg.own_parent_fraction * len(batch_child))) if step >= cfg.own_parent_start else 0
        if n_own:
            # The cascade's own parents for part of the batch (targets back-projected onto them).
            painted, target = own_parents(model, batch_child[:n_own], log2_mpp[:n_own], cfg, generator)
            batch_child = torch.cat([target, batch_child[n_own:]])
            batch_parent = torch.cat([painted, batch_parent[n_own:]])
        loss = diffusion_loss(model, scheduler, batch_child, batch_parent, log2_mpp, cfg, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.step(model.parameters())
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", lr=f"{lr_at(step):.1e}")
        done = step + 1
        out_of_time = time_limit_s is not None and time.perf_counter() - t0 > time_limit_s
        if done % cfg.checkpoint_every == 0 or done == end or out_of_time:
            save_checkpoint(ckpt_path, done, model, optimizer, ema, cfg)
            with open(run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": done, "loss": float(np.mean(losses[-cfg.checkpoint_every:])),
                                    "seconds": round(time.perf_counter() - t0, 1)}) + "\n")
        if out_of_time:
            log.info("time limit reached at step %d; rerun to resume", done)
            break
    return model, ema, losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tileserver train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="packed training patches: .npz files or directories of them (`python -m cascade.training.data pack`)")
    parser.add_argument("--run-dir", type=Path, required=True, help="checkpoints and logs; an existing run resumes")
    parser.add_argument("--init", type=Path, help="start a new run from these weights (e.g. cascade/weights)")
    parser.add_argument("--model-config", type=json.loads, default={},
                        help='JSON of CascadeDenoiser arguments for a new run without --init, e.g. \'{"channels": [48, 96]}\'')
    parser.add_argument("--export", type=Path, help="write the EMA weights here at the end (e.g. cascade/weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--stop-at", type=int, help="end this run at this step (resume later)")
    parser.add_argument("--time-limit", type=float, help="end this run after this many minutes (resume later)")
    for name, value in asdict(TrainConfig()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(**{k: getattr(args, k) for k in asdict(TrainConfig())})
    child, m_per_px = load_shards(args.data)
    log.info("%d training patches of %d px", len(child), child.shape[1])
    model, ema, _ = train(child, m_per_px, args.run_dir, cfg, args.model_config, args.device,
                          stop_at=args.stop_at, time_limit_s=args.time_limit * 60 if args.time_limit else None,
                          init=args.init)
    if args.export:
        export_weights(model, ema, args.export)
        log.info("exported EMA weights to %s", args.export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
