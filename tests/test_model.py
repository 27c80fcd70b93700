import pytest
import torch

from cascade.model import CascadeDenoiser
from cascade.painter import DEFAULT_WEIGHTS, MetatilePainter, default_halo, model_digest
from cascade.sampler import make_scheduler, training_scheduler
from tests.conftest import TINY_CONFIG, make_tiny_model


def inputs(model: CascadeDenoiser, batch: int = 1, height: int = 32, width: int = 32, seed: int = 0):
    """Random denoiser inputs for a canvas, with the context encoded from a random parent window."""
    g = torch.Generator().manual_seed(seed)
    m = model.context_margin
    window = torch.rand(batch, 3, height // 2 + 2 * m, width // 2 + 2 * m, generator=g)
    context = model.encode_context(window, torch.zeros(batch))
    x = torch.randn(batch, 3, height, width, generator=g)
    return x, torch.rand(batch, 3, height, width, generator=g), context


def test_save_and_load_round_trip(tmp_path):
    model = make_tiny_model()
    model.save_pretrained(tmp_path, safe_serialization=True)
    training_scheduler().save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = CascadeDenoiser.from_pretrained(str(tmp_path), low_cpu_mem_usage=False)
    assert model_digest(loaded) == model_digest(model)
    with torch.no_grad():
        x, parent, context = inputs(model)
        args = (x, torch.tensor([10]), parent, torch.tensor([0.5]), context)
        assert torch.allclose(model(*args), loaded(*args), atol=1e-6)
    painter = MetatilePainter.from_pretrained(tmp_path, steps=2)
    assert painter.steps == 2 and painter.sampler == "dpmsolver++"


def test_shipped_weights_load():
    painter = MetatilePainter.from_pretrained()
    assert len(painter.revision) == 12
    size = sum(p.stat().st_size for p in DEFAULT_WEIGHTS.iterdir())
    assert size < 25 * 2**20


def test_forward_shapes_and_per_row_resolution():
    model = make_tiny_model()
    with torch.no_grad():
        x, parent, context = inputs(model, batch=2, height=64, width=48)
        assert context.shape[-2:] == (16, 12)
        out_scalar = model(x, torch.tensor([5, 900]), parent, torch.tensor([0.0, 3.0]), context)
        assert out_scalar.shape == x.shape
        rows = torch.linspace(-1, 4, 64)[None].expand(2, -1)
        out_rows = model(x, 5, parent, rows, context)
        assert out_rows.shape == x.shape
        # The resolution really conditions the output, row by row.
        assert not torch.allclose(out_rows, model(x, 5, parent, rows + 2, context))


def test_config_errors_name_the_values():
    with pytest.raises(ValueError, match="-3"):
        CascadeDenoiser(channels=(-3, 8))
    with pytest.raises(ValueError, match="increasing"):
        CascadeDenoiser(log2_mpp_range=(3.0, 1.0))
    model = make_tiny_model()
    with pytest.raises(ValueError, match="stride"):
        model(torch.zeros(1, 3, 30, 32), 1, torch.zeros(1, 3, 30, 32), torch.zeros(1), torch.zeros(1, 8, 7, 8))
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 3, 32, 32), 1, torch.zeros(1, 3, 32, 32), torch.zeros(1), torch.zeros(1, 8, 4, 4))
    with pytest.raises(ValueError, match="multiple of 8"):
        model.encode_context(torch.zeros(1, 3, 40, 40), torch.zeros(1), margin=4)
    with pytest.raises(ValueError, match="sampler"):
        make_scheduler("euler", dict(training_scheduler().config))


@pytest.mark.parametrize("config", [TINY_CONFIG, dict(TINY_CONFIG, blocks=(2, 3), context_blocks=(2, 1, 2))])
def test_declared_reach_bounds_the_measured_reach(config):
    """Seams rest on these bounds: no output may depend on anything beyond them, at any phase of
    the down-sampling grids. The bounds are also tight (the measured reach is close)."""
    torch.manual_seed(0)
    model = CascadeDenoiser(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)  # every layer, the zero-initialised ones too
    m = model.context_margin
    reach = 0
    for c in range(4, 8):  # every phase of the encoder's coarsest grid (4 feature pixels)
        window = torch.zeros(1, 3, 32 + 2 * m, 32 + 2 * m, requires_grad=True)
        model.encode_context(window, torch.zeros(1))[0, :, c, c].sum().backward()
        rows, cols = window.grad.abs().sum((0, 1)).nonzero(as_tuple=True)
        lo, hi = 2 * c + m, 2 * c + m + 1  # the parent pixels under feature pixel c
        reach = max(reach, lo - rows.min().item(), rows.max().item() - hi, lo - cols.min().item(), cols.max().item() - hi)
    assert m - 16 < reach <= m
    reach = 0
    ctx = torch.zeros(1, config["context_channels"][0], 32, 32)
    for offset in range(16):  # every phase of the denoiser's grids
        sample = torch.zeros(1, 3, 128, 128, requires_grad=True)
        parent = torch.zeros(1, 3, 128, 128, requires_grad=True)
        model(sample, torch.tensor([500.0]), parent, torch.zeros(1), ctx)[0, :, 56 + offset, 56 + offset].sum().backward()
        grad = sample.grad.abs().sum((0, 1)) + parent.grad.abs().sum((0, 1))
        rows, cols = grad.nonzero(as_tuple=True)
        reach = max(reach, (rows - 56 - offset).abs().max().item(), (cols - 56 - offset).abs().max().item())
    assert model.receptive_radius - 4 <= reach <= model.receptive_radius <= default_halo(model)


def test_revision_changes_with_weights_and_settings():
    config = dict(training_scheduler().config)
    a = MetatilePainter(make_tiny_model(0), config, steps=2).revision
    assert MetatilePainter(make_tiny_model(0), config, steps=2).revision == a
    assert MetatilePainter(make_tiny_model(1), config, steps=2).revision != a
    assert MetatilePainter(make_tiny_model(0), config, steps=3).revision != a
    assert TINY_CONFIG["channels"] == (8, 16)
