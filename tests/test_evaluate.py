"""The evaluation: runs end to end on a tiny model and tiny data; its pieces have the right shapes
and its bicubic baseline scores what the metrics module says it should."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cascade.training import evaluate, metrics
from cascade.training.data import save_packed
from cascade.sampler import finish_stage, make_scheduler, training_scheduler
from tests.conftest import make_tiny_model

PATCH = 32


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_children(n: int = 8, size: int = PATCH, seed: int = 0) -> np.ndarray:
    """Colour fields with stripes and a little noise: detail at every scale, values inside (0, 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        stripes = 0.15 * np.sin(2 * np.pi * rng.uniform(2, 8) * (xx + 0.5 * yy) + rng.uniform(0, 6.28))
        img = rng.uniform(0.25, 0.75, 3)[None, None] + stripes[..., None] + rng.normal(0, 0.04, (size, size, 3))
        out[i] = np.clip(img * 255, 0, 255).round().astype(np.uint8)
    return out


@pytest.fixture
def tiny_weights(tmp_path):
    path = tmp_path / "weights"
    make_tiny_model().save_pretrained(str(path))
    training_scheduler().save_pretrained(str(path))
    (path / "sampler.json").write_text(json.dumps({"sampler": "dpmsolver++", "steps": 2}))
    return path


@pytest.fixture
def eval_npz(tmp_path):
    n = 8
    arrays = {
        "child": synthetic_children(n),
        "m_per_px": np.array([0.1, 0.2, 0.5, 0.6, 6.0, 20.0, 30.0, 100.0], np.float32),
        "native_m_per_px": np.full(n, 0.05, np.float32),
        "lat": np.zeros(n, np.float32),
        "source": np.array(["a"] * 4 + ["b"] * 4),
        "origin": np.array([f"f{i}" for i in range(n)]),
    }
    return save_packed(arrays, tmp_path / "eval.npz", codec="raw")


def _finite_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _finite_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _finite_numbers(v)
    elif isinstance(obj, float):
        yield obj


def test_main_end_to_end(tmp_path, tiny_weights, eval_npz, capsys):
    out = tmp_path / "out"
    rc = evaluate.main(["--eval-data", str(eval_npz), "--weights", str(tiny_weights), "--out", str(out),
                        "--samplers", "dpmsolver++,ddim", "--steps", "1,2", "--max-patches", "6",
                        "--batch-size", "4", "--seam-zoom", "2", "--device", "cpu", "--threads", "1"])
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    md = (out / "eval.md").read_text()
    assert md.strip() in capsys.readouterr().out

    assert {"settings", "weights", "machine", "data", "one_stage", "chains", "seams", "sweep", "timing",
            "wall_time_s"} <= set(report)
    s = report["settings"]
    assert (s["sampler"], s["steps"]) == ("dpmsolver++", 2)  # sampler.json's choice, as it is in the sweep
    assert len(report["weights"]["revision"]) == 12
    assert report["machine"]["threads"] == 1 and report["machine"]["cpu"]
    assert report["data"]["n_used"] == 6 and report["data"]["patch"] == PATCH

    one = report["one_stage"]
    assert sum(row["n"] for row in one["bands"]) == one["all"]["n"] == 6
    assert len({row["band"] for row in one["bands"]}) >= 4  # stratified over the bands
    for row in one["bands"] + [one["all"]]:
        for method in evaluate.METHODS:
            assert set(row[method]) == {"psnr", "ssim", "swd"}
    ch = report["chains"]
    assert (ch["stages"], ch["start_px"], ch["end_px"]) == (4, 2, PATCH)
    assert set(ch["all"]["model"]) == {"swd", "hf_ratio", "psnr"}
    seams = report["seams"]
    assert seams["zoom"] == 2 and seams["within_1_fraction"] == 1.0 and seams["max_diff"] <= 1
    assert seams["consistency_psnr"] > 40
    assert [(r["sampler"], r["steps"]) for r in report["sweep"]] == [
        ("dpmsolver++", 1), ("dpmsolver++", 2), ("ddim", 1), ("ddim", 2)]
    assert all(r["ms_per_mpix"] > 0 and set(r) >= {"psnr", "ssim", "swd", "revision"} for r in report["sweep"])

    numbers = list(_finite_numbers(report))
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert "| band (m/px) |" in md and "Seams:" in md and "| sampler | steps |" in md and "chains" in md


def test_stage_chain_and_mean_shapes():
    model = make_tiny_model()
    sched = training_scheduler()
    kw = dict(model=model, scheduler=make_scheduler("dpmsolver++", dict(sched.config)), train_scheduler=sched,
              steps=2, halo=32)
    child = torch.from_numpy(synthetic_children(3)).permute(0, 3, 1, 2).float() / 255
    parent = F.avg_pool2d(child, 2)
    mpp = torch.tensor([0.5, 2.0, 30.0])
    for method in evaluate.METHODS:
        out = evaluate.run_stage(method, parent, mpp, **kw)
        assert out.shape == child.shape and 0 <= out.min() and out.max() <= 1
        assert torch.allclose(F.avg_pool2d(out, 2), parent, atol=1e-4)  # back-projected
    canvas = evaluate.stage_canvas(parent, 32)
    assert canvas.shape == (3, 3, PATCH + 64, PATCH + 64)
    window = evaluate.mirror_pad(parent, 16 + model.context_margin)
    noise = torch.randn(canvas.shape)
    mean = evaluate.mean_prediction(model, sched, window, torch.zeros(3, window.shape[-1]),
                                    torch.zeros(3, canvas.shape[-1]), noise)
    assert mean.shape == canvas.shape and torch.isfinite(mean).all()
    start = F.avg_pool2d(child, 16)
    chain = evaluate.run_chain("model", start, mpp, 4, **kw)
    assert chain.shape == child.shape
    assert torch.allclose(F.avg_pool2d(chain, 16), start, atol=2 / 255)  # each stage keeps its parent


def test_bicubic_baseline_matches_metrics():
    """The eval's bicubic one-stage score equals the metrics module applied to an independent bicubic."""
    real = synthetic_children(4)
    ev = evaluate.Evaluator(make_tiny_model(), dict(training_scheduler().config), halo=32, batch_size=3)
    mpp = np.array([0.2, 1.5, 8.0, 40.0], np.float32)
    outs, _ = ev.one_stage(real, mpp, "dpmsolver++", 1, methods=("bicubic",))
    child = torch.from_numpy(real).permute(0, 3, 1, 2).double() / 255
    parent = metrics.area_downsample(child, 2)
    # The server's conditioning canvas: parent mirrored by halo/2 + 2, bicubic 2x, margin cut; then its finishing step.
    window = torch.from_numpy(np.pad(parent.numpy(), ((0, 0), (0, 0), (18, 18), (18, 18)), mode="symmetric"))
    up = F.interpolate(window, scale_factor=2, mode="bicubic", align_corners=False)[..., 4:-4, 4:-4].clamp(0, 1)
    expected = (finish_stage(up, window[..., 2:-2, 2:-2], 32) * 255).round() / 255
    got = torch.from_numpy(outs["bicubic"]).permute(0, 3, 1, 2).double() / 255
    assert (got - expected).abs().max() <= 1 / 255 + 1e-9
    scores = evaluate.pair_scores(outs["bicubic"], real)
    assert scores["psnr"] == pytest.approx(float(metrics.psnr(expected, child)), abs=0.05)
    assert scores["ssim"] == pytest.approx(float(metrics.ssim(expected, child)), abs=1e-3)
    assert evaluate.pair_scores(real, real)["swd"] == 0.0
    assert evaluate.pair_scores(real, real)["psnr"] == evaluate.PSNR_CAP


def test_untrained_model_is_bicubic_in_the_mean():
    """A zero-output model (the untrained init) predicts v = 0: its mean prediction, and a one-step
    sample, are the bicubic baseline; more steps leave a multiple of the noise in the residual."""
    model = make_tiny_model()
    with torch.no_grad():
        model.conv_out.weight.zero_()
        model.conv_out.bias.zero_()
    ev = evaluate.Evaluator(model, dict(training_scheduler().config), halo=32)
    real = synthetic_children(2)
    mpp = np.array([1.0, 10.0], np.float32)
    one, _ = ev.one_stage(real, mpp, "dpmsolver++", 1)
    assert np.abs(one["mean"].astype(int) - one["bicubic"]).max() <= 1
    assert np.abs(one["model"].astype(int) - one["bicubic"]).max() <= 1
    four, _ = ev.one_stage(real, mpp, "dpmsolver++", 4, methods=("model",))
    assert np.abs(four["model"].astype(int) - one["bicubic"]).max() > 10


def test_select_patches_is_stratified():
    mpp = np.array([0.1] * 50 + [0.5] * 50 + [20.0] * 3 + [100.0] * 1, np.float32)
    sel = evaluate.select_patches(mpp, 20, seed=1)
    assert len(sel) == 20 and len(set(sel.tolist())) == 20
    counts = np.bincount(evaluate.band_index(mpp[sel]), minlength=len(evaluate.band_labels()))
    assert counts[evaluate.band_index(np.array([20.0]))[0]] == 3
    assert counts[evaluate.band_index(np.array([100.0]))[0]] == 1
    assert sorted(counts[counts > 0].tolist()) == [1, 3, 8, 8]
    assert np.array_equal(evaluate.select_patches(mpp, 20, seed=1), sel)
    assert len(evaluate.select_patches(mpp, 0)) == len(mpp)


def test_chain_world_reads_area_means_above_the_chain_start():
    # The atlas reads a band's anchor zoom, which can lie above a real chain's first zoom, and
    # further above than the start image is wide: there the start's mean stands for every pixel.
    from cascade.training.realism import ChainWorld

    img = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)
    world = ChainWorld()
    world.put(10, 80, 40, img)
    np.testing.assert_array_equal(world.read(10, 81, 40, 2, 1), img[0, :, 0:1, 1:3].numpy())
    np.testing.assert_allclose(world.read(9, 40, 20, 1, 1)[:, 0, 0], img[0, :, :2, :2].mean((1, 2)).numpy())
    far = world.read(5, 2, 1, 3, 2)
    assert far.shape == (2, 2, 3)
    np.testing.assert_allclose(far, np.broadcast_to(img[0].mean((1, 2)).numpy()[:, None, None], (2, 2, 3)))
