"""Tile image encoding. PNG is the stored, lossless form; JPEG and WebP are made from its pixels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode(pixels: np.ndarray, fmt: str = "png") -> bytes:
    """Encode uint8 (H, W, 3) pixels. PNG output is byte-for-byte reproducible for equal pixels."""
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    if fmt == "png":
        image.save(buf, format="PNG", compress_level=6)
    elif fmt in ("jpg", "jpeg"):
        image.save(buf, format="JPEG", quality=90)
    elif fmt == "webp":
        image.save(buf, format="WEBP", quality=90, method=4)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """Decode a stored tile to uint8 (H, W, 3)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
