"""Seams, cross-zoom consistency and determinism of painted tiles (tiny random model, CPU)."""

import random

import mercantile
import numpy as np
import pytest
import torch

from cascade.painter import MetatilePainter, default_halo
from cascade.sampler import training_scheduler
from tileserver.encode import decode
from tests.conftest import make_service, make_tiny_model


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def stored_pixels(service, tile):
    return decode(service.store.load(service.key(service.worlds["test"], tile)))


def test_tiles_painted_one_by_one_equal_one_canvas(service, painter):
    # A 2x2 block whose four tiles belong to four different metatiles.
    z, x0, y0 = 3, 1, 1
    block = [mercantile.Tile(x0 + dx, y0 + dy, z) for dy in (0, 1) for dx in (0, 1)]
    assert len({mercantile.parent(t) for t in block}) == 4
    order = block[:]
    random.Random(0).shuffle(order)
    for t in order:
        service.tile("test", t.z, t.x, t.y)
    mosaic = np.zeros((512, 512, 3), np.uint8)
    for t in block:
        r, c = t.y - y0, t.x - x0
        mosaic[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] = stored_pixels(service, t)

    def parent_pixels(t):
        return service.world_pixels("test", t)

    canvas = painter.paint_regions(3, z, [(256 * x0, 256 * y0)], 512, 512, parent_pixels)[0]
    diff = np.abs(canvas.astype(int) - mosaic.astype(int))
    assert (diff <= 1).mean() >= 0.999, f"max diff {diff.max()}, {np.mean(diff > 1):.4%} pixels off"
    # The model really paints: the result is not just the upsampled parent.
    assert canvas.std() > 5


def test_children_area_downsample_to_their_parent(service):
    parent = mercantile.Tile(1, 1, 2)
    for child in mercantile.children(parent):
        service.tile("test", child.z, child.x, child.y)
    mosaic = np.zeros((512, 512, 3), np.float64)
    for child in mercantile.children(parent):
        r, c = child.y - 2 * parent.y, child.x - 2 * parent.x
        mosaic[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] = stored_pixels(service, child)
    down = mosaic.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert psnr(down, stored_pixels(service, parent)) >= 40


def test_same_tile_same_bytes_from_fresh_caches(tmp_path, small_root):
    tile = (3, 5, 2)
    outputs = []
    for name in ("a", "b"):
        # A fresh model object too: nothing may carry over but the weights.
        painter = MetatilePainter(make_tiny_model(), dict(training_scheduler().config), steps=2)
        service = make_service(tmp_path / name, painter, small_root)
        outputs.append(service.tile("test", *tile))
        service.store.close()
    assert outputs[0] == outputs[1]
    assert decode(outputs[0]).shape == (256, 256, 3)


def test_paint_regions_rejects_misaligned_windows(painter):
    with pytest.raises(ValueError, match="multiples"):
        painter.paint_regions(0, 3, [(3, 0)], 512, 512, lambda t: np.zeros((256, 256, 3), np.uint8))
