import numpy as np
import pytest
import torch

from cascade.noise import batch_noise, global_noise, hash32


def test_hash_pinned_values():
    # lowbias32 reference values (computed with unbounded integers in plain Python).
    def ref(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    xs = [0, 1, 2, 12345, 0xFFFFFFFF, 0x80000000, 0xDEADBEEF]
    assert hash32(torch.tensor(xs, dtype=torch.int64)).tolist() == [ref(x) for x in xs]


def test_noise_is_standard_normal():
    n = global_noise(seed=1, zoom=10, x0=0, y0=0, height=256, width=256)
    assert n.shape == (3, 256, 256) and n.dtype == torch.float32
    assert abs(n.mean().item()) < 0.02
    assert abs(n.std().item() - 1) < 0.02
    # Neighbouring pixels and channels are uncorrelated.
    assert abs(torch.corrcoef(torch.stack([n[0, :, :-1].flatten(), n[0, :, 1:].flatten()]))[0, 1]) < 0.02
    assert abs(torch.corrcoef(torch.stack([n[0].flatten(), n[1].flatten()]))[0, 1]) < 0.02


def test_window_is_a_crop_of_any_larger_window():
    big = global_noise(7, 12, x0=1000, y0=2000, height=96, width=128)
    small = global_noise(7, 12, x0=1040, y0=2010, height=20, width=30)
    assert torch.equal(small, big[:, 10:30, 40:70])


def test_every_key_part_matters():
    base = global_noise(1, 5, 64, 64, 8, 8, step=0)
    for other in (
        global_noise(2, 5, 64, 64, 8, 8, step=0),
        global_noise(1, 6, 64, 64, 8, 8, step=0),
        global_noise(1, 5, 64, 64, 8, 8, step=1),
        global_noise(1, 5, 65, 64, 8, 8, step=0),
    ):
        assert not torch.equal(base, other)


def test_columns_wrap_at_the_antimeridian():
    zoom = 2
    width = 256 << zoom
    across = global_noise(3, zoom, x0=width - 8, y0=100, height=4, width=16)
    left = global_noise(3, zoom, x0=0, y0=100, height=4, width=8)
    right = global_noise(3, zoom, x0=width - 8, y0=100, height=4, width=8)
    assert torch.equal(across[..., :8], right) and torch.equal(across[..., 8:], left)


def test_negative_rows_and_batch_position():
    single = global_noise(5, 3, 16, -24, 8, 8)
    batch = batch_noise(5, 3, [(0, 0), (16, -24), (64, 64)], 8, 8)
    assert torch.equal(batch[1], single)
    assert np.isfinite(single.numpy()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_numbers_on_gpu():
    cpu = global_noise(9, 14, 4096, 8192, 64, 64)
    gpu = global_noise(9, 14, 4096, 8192, 64, 64, device="cuda").cpu()
    assert torch.allclose(cpu, gpu, atol=1e-6)
