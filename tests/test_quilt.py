"""Image quilting: the fine band's sheets sewn from many photos of one kind of ground."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.training.quilt import fields, parcels, quilt, seam_mask


def test_seam_follows_the_cheapest_path():
    # Zero error down a crooked line through a strip of noise: the cut takes it.
    rng = np.random.default_rng(0)
    error = rng.uniform(1, 2, (40, 12))
    line = np.clip(6 + np.round(3 * np.sin(np.arange(40) / 5)).astype(int), 0, 11)
    error[np.arange(40), line] = 0
    keep = seam_mask(error)
    assert keep.shape == error.shape
    assert np.array_equal(keep.sum(1), line)  # left of the line is kept, the line itself is new


def _textured(rng, colour, size=64):
    return np.clip(rng.normal(colour, 40, (size, size, 3)), 0, 255).astype(np.uint8)


def test_sheet_is_sewn_from_the_photos_and_reproducible():
    rng = np.random.default_rng(1)
    photos = [_textured(rng, c) for c in (60, 120, 180)]
    a = quilt(photos, 150, 48, 12, np.random.default_rng(7), harmonise=0.0)
    b = quilt(photos, 150, 48, 12, np.random.default_rng(7), harmonise=0.0)
    assert a.shape == (150, 150, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    # Without colour balancing every pixel of the sheet is a pixel of one of the photos.
    known = {tuple(p) for img in photos for p in img.reshape(-1, 3)}
    assert all(tuple(p) in known for p in a.reshape(-1, 3)[::7])
    assert not np.array_equal(a, quilt(photos, 150, 48, 12, np.random.default_rng(8), harmonise=0.0))


def test_a_smooth_photo_does_not_win_against_textured_ground():
    # A flat photo of the textured photos' mean colour differs less from any of them, pixel for
    # pixel, than they do from each other; the contrast term keeps it out of a sheet that starts
    # textured (without it, flat pieces take over).
    rng = np.random.default_rng(2)
    textured = [_textured(rng, 120) for _ in range(6)]
    flat = [np.full((64, 64, 3), 120, np.uint8) for _ in range(6)]

    def smooth_share(seed: int, **kw) -> tuple[bool, float]:
        sheet = quilt(textured + flat, 200, 40, 12, np.random.default_rng(seed), harmonise=0.0, **kw)
        local = sheet.astype(np.float32).reshape(25, 8, 25, 8, 3).std(axis=(1, 3)).mean(-1)
        return local[0, 0] > 5, float((local < 5).mean())

    seed = next(s for s in range(50) if smooth_share(s)[0])  # a sheet whose first piece is textured
    assert smooth_share(seed)[1] < 0.1
    assert smooth_share(seed, contrast=0.0)[1] > 0.3


def test_photos_too_small_for_a_piece_are_refused():
    with pytest.raises(ValueError, match="at least 64 px"):
        quilt([np.zeros((32, 32, 3), np.uint8)], 100, 64, 16, np.random.default_rng(0))


def test_parcels_cover_the_square_once_within_their_sizes():
    for seed in range(5):
        cut = parcels(1000, (150, 400), np.random.default_rng(seed))
        count = np.zeros((1000, 1000), int)
        for y0, x0, h, w in cut:
            count[y0:y0 + h, x0:x0 + w] += 1
            assert 150 <= min(h, w) and max(h, w) <= 400
        assert (count == 1).all()
        assert len(cut) >= 9


def test_each_field_is_one_photo_grown_in_its_own_colour():
    rng = np.random.default_rng(3)
    photos = [_textured(rng, c) for c in (70, 120, 170, 220)]
    sheet = fields(photos, 300, 32, 8, np.random.default_rng(5), (80, 150))
    assert sheet.shape == (300, 300, 3) and np.array_equal(sheet, fields(photos, 300, 32, 8,
                                                                          np.random.default_rng(5), (80, 150)))
    owners = [{tuple(p) for p in img.reshape(-1, 3)} for img in photos]
    used = set()
    for y0, x0, h, w in parcels(300, (80, 150), np.random.default_rng(5)):
        pixels = {tuple(p) for p in sheet[y0:y0 + h, x0:x0 + w].reshape(-1, 3)}
        # Every pixel of the field is a pixel of one photo (no colour balancing, no second photo).
        mine = [k for k, own in enumerate(owners) if pixels <= own]
        assert len(mine) == 1, (y0, x0)
        used.add(mine[0])
    assert len(used) > 1  # fields differ
