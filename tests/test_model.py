import pytest
import torch

from cascade.model import CascadeDenoiser
from cascade.painter import DEFAULT_WEIGHTS, MetatilePainter, model_digest
from cascade.sampler import make_scheduler, training_scheduler
from tests.conftest import TINY_CONFIG, make_tiny_model


def test_save_and_load_round_trip(tmp_path):
    model = make_tiny_model()
    model.save_pretrained(tmp_path, safe_serialization=True)
    training_scheduler().save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = CascadeDenoiser.from_pretrained(str(tmp_path), low_cpu_mem_usage=False)
    assert model_digest(loaded) == model_digest(model)
    x = torch.randn(1, 3, 32, 32)
    parent = torch.rand(1, 3, 32, 32)
    args = (x, torch.tensor([10]), parent, torch.tensor([0.5]))
    with torch.no_grad():
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
    x = torch.randn(2, 3, 64, 48)
    out_scalar = model(x, torch.tensor([5, 900]), torch.rand(2, 3, 64, 48), torch.tensor([0.0, 3.0]))
    assert out_scalar.shape == x.shape
    rows = torch.linspace(-1, 4, 64)[None].expand(2, -1)
    assert model(x, 5, torch.rand(2, 3, 64, 48), rows).shape == x.shape


def test_config_errors_name_the_values():
    with pytest.raises(ValueError, match="-3"):
        CascadeDenoiser(base_channels=-3)
    with pytest.raises(ValueError, match="increasing"):
        CascadeDenoiser(log2_mpp_range=(3.0, 1.0))
    with pytest.raises(ValueError, match="stride"):
        make_tiny_model()(torch.zeros(1, 3, 30, 32), 1, torch.zeros(1, 3, 30, 32), torch.zeros(1))
    with pytest.raises(ValueError, match="sampler"):
        make_scheduler("euler", dict(training_scheduler().config))


def test_revision_changes_with_weights_and_settings():
    config = dict(training_scheduler().config)
    a = MetatilePainter(make_tiny_model(0), config, steps=2).revision
    assert MetatilePainter(make_tiny_model(0), config, steps=2).revision == a
    assert MetatilePainter(make_tiny_model(1), config, steps=2).revision != a
    assert MetatilePainter(make_tiny_model(0), config, steps=3).revision != a
    assert TINY_CONFIG["base_channels"] == 8
