"""Provisional tiles: the answer to a tile request whose paint is still running after the cold wait.

The picture is the deepest stored ancestor (or the world root) cropped to the tile's footprint and
upsampled: a blurred version of what the paint will give, since the cascade keeps each 2x2 block's
mean from its parent. It is sent once and kept nowhere (no store, no hot tiles, `no-store`).
"""

from __future__ import annotations

import mercantile
import numpy as np
from PIL import Image

from tileserver.encode import decode, encode
from tileserver.tiles import TileService

HEADER = "X-Tile-Provisional"  # "1" on a provisional answer; absent on real tiles


def tile(service: TileService, world_name: str, footprint: mercantile.Tile, size: int, fmt: str) -> bytes:
    """The provisional `size` px tile of `footprint` (256 px, or 512 for @2x), encoded as `fmt`."""
    ancestor, pixels = deepest_stored(service, world_name, footprint)
    return encode(upsampled(pixels, ancestor, footprint, size), fmt)


def deepest_stored(
    service: TileService, world_name: str, footprint: mercantile.Tile
) -> tuple[mercantile.Tile, np.ndarray]:
    """`footprint` or its deepest ancestor that is stored, else its ancestor at the root zoom (always
    there: reprojected from the world's image), with its pixels."""
    world = service.worlds[world_name]
    t = footprint
    while t.z > world.root.root_zoom:
        data = service.store.load(service.key(world, t))
        if data is not None:
            return t, decode(data)
        t = mercantile.parent(t)
    return t, service.world_pixels(world_name, t)


def upsampled(pixels: np.ndarray, ancestor: mercantile.Tile, footprint: mercantile.Tile, size: int) -> np.ndarray:
    """The part of `ancestor`'s pixels under `footprint`, resampled (bicubic) to size x size.

    The crop box is fractional (a z18 footprint is a few hundredths of a z4 pixel) and the filter reads
    the pixels around it, so neighbouring provisional tiles meet without a step.
    """
    scale = 1 << (footprint.z - ancestor.z)
    side = pixels.shape[0] / scale
    left, top = (footprint.x - ancestor.x * scale) * side, (footprint.y - ancestor.y * scale) * side
    box = (left, top, left + side, top + side)
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BICUBIC, box=box))
