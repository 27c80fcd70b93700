"""cascade.training.data on a tiny synthetic data directory laid out like the real one (built in tmp)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.training import data as D

PATCH = 32  # small patches keep the tests fast; the code is the same for 128


def _texture(h: int, w: int, seed: int) -> np.ndarray:
    """A bright, non-repeating RGB texture with values in [40, 250] (never no-data black)."""
    rng = np.random.default_rng(seed)
    low = rng.random((h // 8 + 2, w // 8 + 2, 3))
    up = np.kron(low, np.ones((8, 8, 1)))[:h, :w]
    img = 40 + 150 * up + 60 * rng.random((h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def _with_wedge(img: np.ndarray) -> np.ndarray:
    """Black no-data wedge in the top-left corner (a triangle covering ~1/8 of the image)."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    out = img.copy()
    out[xx + yy < min(h, w) // 2] = 0
    return out


# file, width, height, m_per_px, lat, lon, region, wedge
FAKE = [
    ("ucmerced/agricultural/agricultural00.png", 64, 64, 0.3048, "", "", "US city (agricultural)", False),
    ("ucmerced/agricultural/agricultural01.png", 64, 64, 0.3048, "", "", "US city (agricultural)", False),
    ("ucmerced/agricultural/agricultural92.png", 64, 64, 0.3048, "", "", "US city (agricultural)", False),
    ("ucmerced/forest/forest07.png", 64, 64, 0.3048, "", "", "US city (forest)", False),
    ("ucmerced/forest/forest99.png", 64, 64, 0.3048, "", "", "US city (forest)", False),
    ("openaerialmap/z21/1000_2000.png", 64, 64, 0.0746, "0.35", "32.59", "Kampala_UG", False),
    ("openaerialmap/z20/500_1000.png", 64, 64, 0.1493, "0.35", "32.59", "Kampala_UG", False),
    ("openaerialmap/z21/3000_4000.png", 64, 64, 0.0742, "-6.8", "39.2", "DarEsSalaam_TZ", False),
    ("openaerialmap/z19/1500_2000.png", 128, 128, 0.2645, "27.6", "85.5", "Banepa_NP", False),
    ("neon/YELL_train.png", 100, 90, 0.1, "44.95", "-110.54", "NEON site YELL", False),
    ("neon/HARV_001.png", 100, 100, 0.1, "42.54", "-72.17", "NEON site HARV", False),
    ("neon/SJER_047.png", 20, 100, 0.1, "37.11", "-119.73", "NEON site SJER", False),  # too narrow
    ("satellogic_1m/20220813_102958.png", 96, 96, 1.0, "33.4", "62.2", "western Afghanistan desert", False),
    ("naip_5m/m_4709963_se_14_1_20190904.png", 120, 100, 5.0, "47.0", "-99.2", "North Dakota", False),
    ("naip_5m/m_4709963_se_14_1_20200831.png", 120, 100, 5.0, "47.0", "-99.2", "North Dakota", False),
    ("sentinel2_10m/Boadella_2020-01-28.jpg", 96, 96, 10.0, "42.35", "2.8", "Boadella reservoir", False),
    ("sentinel2_10m/Boadella_2021-07-16.jpg", 96, 96, 10.0, "42.35", "2.8", "Boadella reservoir", False),
    ("landsat_30m/LC08_224077_20200518.png", 160, 128, 30.0, "-25.0", "-54.4", "Parana/Iguacu", True),
    ("landsat_30m/LC08_224078_20200518.png", 160, 140, 30.0, "-25.6", "-54.6", "Parana/Iguacu", True),
    ("landsat_300m/quebec_1.png", 128, 128, 300.0, "46.0", "-74.5", "Laurentians, Quebec", True),
    ("modis/terra_truecolor_0.jpg", 64, 64, "", "40.0", "-75.0", "US East Coast", False),
    ("bluemarble/bmng_topo_bathy_512x256.png", 512, 256, 4892.0, "", "", "whole Earth", False),
    # Blue Marble web tiles: three of one block in a held-out z4 tile (7, 6), two of a block elsewhere.
    ("bluemarble_tiles/z7/56_48.png", 64, 64, 1100.0, "40.5", "-22.5", "web tile z=7 x=56 y=48", False),
    ("bluemarble_tiles/z7/57_48.png", 64, 64, 1100.0, "40.5", "-19.7", "web tile z=7 x=57 y=48", False),
    ("bluemarble_tiles/z7/57_49.png", 64, 64, 1110.0, "39.4", "-19.7", "web tile z=7 x=57 y=49", False),
    ("bluemarble_tiles/z7/64_40.png", 64, 64, 900.0, "55.8", "0.0", "web tile z=7 x=64 y=40", False),
    ("bluemarble_tiles/z7/65_40.png", 64, 64, 900.0, "55.8", "2.8", "web tile z=7 x=65 y=40", False),
    ("landsat_scenes/olinda_recife_brazil.png", 96, 96, 28.5, "-8.0", "-34.87", "Olinda/Recife", False),
    ("landsat_scenes/grenada.png", 96, 96, 60.0, "12.1", "-61.7", "Grenada", False),
    ("naip_scenes/m_3008501_ne_16_1_20110815.png", 64, 64, 25.93, "30.97", "-85.9", "Alabama", False),
    ("sentinel2_scenes/bigearthnet_serbia.png", 64, 64, 10.0, "44.7", "21.5", "BigEarthNet patch (Europe)", False),
    ("sentinel2_scenes/bigearthnet_ireland.png", 64, 64, 10.0, "52.3", "-6.9", "BigEarthNet patch (Europe)", False),
]


def make_fake_data_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "index.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "width", "height", "m_per_px", "lat", "lon", "region", "source", "licence"])
        for i, (file, width, height, mpp, lat, lon, region, wedge) in enumerate(FAKE):
            img = _texture(height, width, seed=i)
            if wedge:
                img = _with_wedge(img)
            path = root / file
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, quality=95) if file.endswith(".jpg") else Image.fromarray(img).save(path)
            w.writerow([file, width, height, mpp, lat, lon, region, "fake " + file.split("/")[0], "test"])
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_fake_data_dir(tmp_path_factory.mktemp("fake_data"))


@pytest.fixture(scope="module")
def train_patches(data_dir):
    return D.build_patches(data_dir, "train", patch=PATCH, count=300, seed=1, progress=False)


# ---------------------------------------------------------------------------------------------
# Index and split


def test_load_index_fields(data_dir):
    recs = D.load_index(data_dir, mosaics=False)
    assert len(recs) == len(FAKE)
    r = {x.file: x for x in recs}
    modis = r["modis/terra_truecolor_0.jpg"]
    assert modis.m_per_px is None and modis.split == "train"
    oam = r["openaerialmap/z21/1000_2000.png"]
    assert oam.width == 64 and oam.m_per_px == pytest.approx(0.0746) and oam.lat == pytest.approx(0.35)
    assert Path(oam.path).is_file() and Path(oam.path).is_absolute()
    assert oam.group == "openaerialmap" and oam.region == "Kampala_UG"
    assert r["bluemarble/bmng_topo_bathy_512x256.png"].lat is None


def test_split_is_by_place(data_dir):
    recs = D.load_index(data_dir, mosaics=False)
    for rec in recs:
        assert rec.split == D.split_of(rec) and rec.split in D.SPLITS
    evals = {r.file for r in recs if r.split == "eval"}
    assert evals == {
        "ucmerced/agricultural/agricultural92.png",
        "ucmerced/forest/forest99.png",
        "openaerialmap/z21/1000_2000.png",
        "openaerialmap/z20/500_1000.png",
        "neon/YELL_train.png",
        "naip_5m/m_4709963_se_14_1_20200831.png",
        "sentinel2_10m/Boadella_2021-07-16.jpg",
        "landsat_30m/LC08_224077_20200518.png",
        "bluemarble_tiles/z7/56_48.png",
        "bluemarble_tiles/z7/57_48.png",
        "bluemarble_tiles/z7/57_49.png",
        "landsat_scenes/olinda_recife_brazil.png",
        "naip_scenes/m_3008501_ne_16_1_20110815.png",
        "sentinel2_scenes/bigearthnet_serbia.png",
    }
    # Places (OAM regions, NEON sites, Landsat frames) never straddle the splits.
    for group in ("openaerialmap", "neon"):
        train = {r.region for r in recs if r.group == group and r.split == "train"}
        held = {r.region for r in recs if r.group == group and r.split == "eval"}
        assert held and train and not (train & held), group
    frames = {r.file.split("_2020")[0]: r.split for r in recs if r.group == "landsat_30m"}
    assert sorted(frames.values()) == ["eval", "train"]
    # Blue Marble, Landsat 300 m, Satellogic and MODIS are train only.
    for r in recs:
        if r.group in ("bluemarble", "landsat_300m", "satellogic_1m", "modis"):
            assert r.split == "train"


def test_web_tiles_become_mosaics(data_dir):
    recs = D.load_index(data_dir)
    blocks = {r.file: r for r in recs if r.group == "bluemarble_tiles"}
    assert set(blocks) == {"bluemarble_tiles/z7/block_14_12", "bluemarble_tiles/z7/block_16_10"}
    held, kept = blocks["bluemarble_tiles/z7/block_14_12"], blocks["bluemarble_tiles/z7/block_16_10"]
    assert (held.split, kept.split) == ("eval", "train")
    assert (held.width, held.height, len(held.tiles)) == (128, 128, 3)
    assert (kept.width, kept.height, len(kept.tiles)) == (128, 64, 2)
    assert held.m_per_px == pytest.approx((1100 + 1100 + 1110) / 3) and held.place == held.file
    # Pixels land where the tiles are; the missing tile (56, 49) is no-data black.
    img = D.load_image(held)
    tile = np.asarray(Image.open(data_dir / "bluemarble_tiles/z7/57_49.png").convert("RGB"))
    np.testing.assert_array_equal(img[64:, 64:], tile)
    assert img[64:, :64].max() == 0
    # Every other image passes through unchanged.
    assert len(recs) == len(FAKE) - 5 + 2
    # Crops from the held-out mosaic never touch the missing tile.
    p = D.build_patches(data_dir, "eval", patch=PATCH, count=60, seed=3, progress=False)
    mosaic = p["source"] == "bluemarble_tiles"
    assert mosaic.sum() > 0 and (p["child"][mosaic].max(-1) > D.BLACK_LEVEL).all()


def test_split_of_ucmerced_indices():
    def rec(file):
        return D.ImageRecord(path="/x/" + file, width=256, height=256, m_per_px=0.3, lat=None, lon=None,
                             region="", source="", split="", file=file)
    assert D.split_of(rec("ucmerced/beach/beach89.jpg")) == "train"
    assert D.split_of(rec("ucmerced/beach/beach90.jpg")) == "eval"
    assert D.split_of(rec("ucmerced/beach/beach99.jpg")) == "eval"
    assert D.split_of(rec("ucmerced/beach/beach00.jpg")) == "train"


# ---------------------------------------------------------------------------------------------
# Never upsample


def test_requesting_finer_than_native_raises():
    img = _texture(64, 64, 0)
    with pytest.raises(ValueError, match="finer than native"):
        D.sample_child_patches(img, native_m_per_px=1.0, m_per_px=0.9, patch=PATCH, n=1)
    with pytest.raises(ValueError, match="upsample"):
        D.area_downsample_image(img, (65, 64))
    with pytest.raises(ValueError):  # window does not fit
        D.sample_child_patches(img, native_m_per_px=1.0, m_per_px=2.5, patch=PATCH, n=1)
    kids, r, where = D.sample_child_patches(img, 1.0, 2.0, PATCH, n=3, rng=np.random.default_rng(0))
    assert kids.shape == (3, PATCH, PATCH, 3) and np.all(r == 2.0) and np.all(where[:, 2] == 64)


def test_children_never_finer_than_native(data_dir, train_patches):
    p = train_patches
    native = {r.file: r.m_per_px for r in D.load_index(data_dir)}
    assert len(p["child"]) > 100
    idx_native = np.array([native[f] for f in p["origin"]], np.float32)
    np.testing.assert_allclose(p["native_m_per_px"], idx_native, rtol=1e-6)
    assert np.all(p["m_per_px"] >= idx_native * (1 - 1e-6))
    # Coarser children exist too (octaves above native), and every image is a whole window reduced.
    assert np.any(p["m_per_px"] >= 2 * idx_native * (1 - 1e-6))
    assert "modis" not in set(p["source"])  # unknown resolution: never used
    ev = D.build_patches(data_dir, "eval", patch=PATCH, count=100, seed=0, progress=False)
    ratio = ev["m_per_px"] / ev["native_m_per_px"]
    np.testing.assert_allclose(ratio, 2.0 ** np.round(np.log2(ratio)), rtol=1e-6)  # eval: whole octaves
    assert set(ev["origin"]) <= {r.file for r in D.load_index(data_dir) if r.split == "eval"}


def test_child_is_area_downsampled_window():
    img = _texture(96, 96, 3)
    kids, r, where = D.sample_child_patches(img, 0.5, 1.0, PATCH, n=2, rng=np.random.default_rng(0))
    for kid, (x0, y0, s) in zip(kids, where):
        block = img[y0:y0 + s, x0:x0 + s].astype(np.float64).reshape(PATCH, 2, PATCH, 2, 3).mean(axis=(1, 3))
        assert np.abs(kid - block).max() <= 0.5 + 1e-9  # exact box mean, rounded to uint8


# ---------------------------------------------------------------------------------------------
# Parents


def test_parent_is_exact_2x2_mean(train_patches):
    ds = D.PatchDataset(train_patches, augment=True, seed=0)
    batch = next(ds.batches(8))
    c, p = batch["child"], batch["parent"]
    assert c.dtype == p.dtype == torch.float32
    assert c.shape == (8, 3, PATCH, PATCH) and p.shape == (8, 3, PATCH // 2, PATCH // 2)
    assert float(c.min()) >= 0 and float(c.max()) <= 1
    manual = (c[..., 0::2, 0::2] + c[..., 1::2, 0::2] + c[..., 0::2, 1::2] + c[..., 1::2, 1::2]) / 4
    torch.testing.assert_close(p, manual, atol=1e-6, rtol=0)
    assert batch["m_per_px"].shape == (8,)
    # numpy helper agrees
    kid = train_patches["child"][0]
    child_f, parent_f = D.make_pair(kid)
    np.testing.assert_allclose(parent_f, child_f.reshape(PATCH // 2, 2, PATCH // 2, 2, 3).mean(axis=(1, 3)), atol=1e-7)


def test_augmentation_covers_the_dihedral_group():
    rng = np.random.default_rng(0)
    kid = rng.integers(0, 256, (1, PATCH, PATCH, 3), dtype=np.uint8)
    ds = D.PatchDataset({"child": kid, "m_per_px": np.array([2.0], np.float32)}, augment=True, seed=0)
    base = torch.from_numpy(kid[0]).permute(2, 0, 1).float() / 255
    variants = [D.dihedral(base, t) for t in range(8)]
    seen = set()
    for _ in range(80):
        s = ds[0]
        hits = [t for t, v in enumerate(variants) if torch.equal(s["child"], v)]
        assert len(hits) == 1
        seen.add(hits[0])
        assert torch.allclose(s["parent"], torch.nn.functional.avg_pool2d(s["child"][None], 2)[0], atol=1e-7)
        assert float(s["m_per_px"]) == 2.0
    assert seen == set(range(8))


def test_resolution_filter(train_patches):
    ds = D.PatchDataset(train_patches, augment=False, min_m_per_px=1.0, max_m_per_px=100.0)
    assert len(ds) > 0 and float(ds.m_per_px.min()) >= 1.0 and float(ds.m_per_px.max()) <= 100.0


# ---------------------------------------------------------------------------------------------
# No-data masks


def test_nodata_mask_dilates_wedges_not_single_dark_pixels():
    img = _with_wedge(_texture(64, 64, 5))
    img[50, 50] = 2  # one dark (e.g. water) pixel: masked, but not grown
    m, wedges = D.nodata_mask(img, regions=True)
    black = img.max(-1) <= D.BLACK_LEVEL
    assert m[black].all() and np.array_equal(m, D.nodata_mask(img))
    assert m[50, 50] and m[49:52, 49:52].sum() == 1 and not wedges[50, 50]
    assert m.sum() > black.sum()  # the wedge border is grown by NODATA_DILATE px
    assert wedges[black & ~(np.arange(64)[None, :] > 40)].all()
    assert D.nodata_mask(_texture(32, 32, 6)) is None
    assert D.nodata_mask(_texture(32, 32, 6), regions=True) == (None, None)


def test_crops_with_nodata_are_rejected():
    img = _with_wedge(_texture(128, 128, 7))
    # scattered dark pixels (deep water, shadows) in the right half, away from the wedge
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, 128, 40), rng.integers(112, 128, 40)
    img[ys, xs] = 1
    inv, wedges = D.nodata_mask(img, regions=True)
    # Strict threshold: no masked source pixel anywhere under a kept crop.
    for m_per_px in (1.0, 1.5, 2.0):
        kids, _, where = D.sample_child_patches(img, 1.0, m_per_px, PATCH, n=40, rng=rng, invalid=inv,
                                                min_valid_fraction=1.0, max_tries=100)
        assert len(kids) > 0
        for x0, y0, s in where:
            assert not inv[y0:y0 + s, x0:x0 + s].any()
        assert (kids.max(-1) > D.BLACK_LEVEL).all()
    # Default (0.99) with the wedges forbidden: never a wedge pixel, and at most 1% of the child
    # pixels have a scattered dark pixel under them.
    kids, _, where = D.sample_child_patches(img, 1.0, 2.0, PATCH, n=200, rng=rng, invalid=inv, forbidden=wedges,
                                            max_tries=50)
    assert len(kids) > 0
    some_dark = 0
    for x0, y0, s in where:
        assert not wedges[y0:y0 + s, x0:x0 + s].any()
        f = s // PATCH
        touched = inv[y0:y0 + s, x0:x0 + s].reshape(PATCH, f, PATCH, f).any(axis=(1, 3))
        assert touched.mean() <= 1 - D.MIN_VALID_FRACTION + 1e-12
        some_dark += bool(touched.any())
    assert some_dark > 0  # the 1% tolerance is used for scattered pixels
    # Without the wedge rule, the 1% tolerance would let wedge corners in.
    _, _, where = D.sample_child_patches(img, 1.0, 2.0, PATCH, n=300, rng=rng, invalid=inv, max_tries=50)
    assert any(wedges[y0:y0 + s, x0:x0 + s].any() for x0, y0, s in where)
    # A crop entirely inside no-data can never be produced.
    tiny = np.zeros((PATCH, PATCH, 3), np.uint8)
    kids, _, _ = D.sample_child_patches(tiny, 1.0, 1.0, PATCH, n=3, invalid=D.nodata_mask(tiny))
    assert len(kids) == 0


def test_wedge_images_give_clean_patches(data_dir):
    p = D.build_patches(data_dir, "train", patch=PATCH, count=300, seed=2, progress=False)
    wedge = np.isin(p["source"], ["landsat_30m", "landsat_300m"])
    assert wedge.sum() > 0
    # The fake images have no dark pixels except the wedges: nothing dark may reach a patch.
    assert (p["child"][wedge].max(-1) > D.BLACK_LEVEL).all()


# ---------------------------------------------------------------------------------------------
# Balance, Blue Marble, determinism


def test_balance_and_bluemarble(data_dir, train_patches):
    p = train_patches
    srcs = set(p["source"])
    assert {"ucmerced", "openaerialmap", "neon", "satellogic_1m", "naip_5m", "sentinel2_10m",
            "landsat_30m", "landsat_300m", "bluemarble"} <= srcs
    # Small sets give more crops per image than the big ones.
    per_img = {g: np.sum(p["source"] == g) / len(set(p["origin"][p["source"] == g])) for g in srcs}
    assert per_img["satellogic_1m"] > per_img["ucmerced"]
    # Blue Marble crops stay within |lat| < 60 (whole window, not just the centre).
    bm = p["source"] == "bluemarble"
    assert bm.sum() > 0
    half_deg = (p["m_per_px"][bm] / 4892.0) * PATCH / 2 * (180.0 / 256)
    assert np.all(np.abs(p["lat"][bm]) + half_deg <= 60.0 + 1e-3)
    assert np.all(p["m_per_px"][bm] >= 4892.0 * (1 - 1e-6))


def test_deterministic_and_fixed_mode(data_dir):
    a = D.build_patches(data_dir, "eval", patch=PATCH, count=50, seed=5, progress=False)
    b = D.build_patches(data_dir, "eval", patch=PATCH, count=50, seed=5, progress=False)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    fixed = D.build_patches(data_dir, "eval", patch=PATCH, per_image_per_scale=1, seed=0, progress=False)
    n_slots = sum(len(D._slots_for(i, r, PATCH, False, 1.0)) for i, r in
                  enumerate(r for r in D.load_index(data_dir) if r.split == "eval"))
    assert 0 < len(fixed["child"]) <= n_slots


# ---------------------------------------------------------------------------------------------
# Packing


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_pack_round_trip(data_dir, tmp_path, codec):
    out = tmp_path / "sub" / f"eval_{codec}.npz"
    rep = D.pack(data_dir, out, "eval", patch=PATCH, count=40, seed=0, codec=codec, progress=False)
    assert out.is_file() and rep["n"] > 0 and rep["bytes"] > 0
    arrays = D.load_arrays(out)
    n = rep["n"]
    assert arrays["child"].shape == (n, PATCH, PATCH, 3) and arrays["child"].dtype == np.uint8
    assert arrays["m_per_px"].shape == (n,) and arrays["m_per_px"].dtype == np.float32
    assert arrays["source"].shape == (n,) and arrays["origin"].shape == (n,)
    assert arrays["meta"]["split"] == "eval" and arrays["meta"]["codec"] == codec
    ref = D.build_patches(data_dir, "eval", patch=PATCH, count=40, seed=0, progress=False)
    np.testing.assert_array_equal(arrays["m_per_px"], ref["m_per_px"])
    np.testing.assert_array_equal(arrays["source"], ref["source"])
    err = arrays["child"].astype(np.float64) - ref["child"]
    if codec == "raw":
        assert not err.any()
    else:
        assert 10 * np.log10(255.0 ** 2 / np.mean(err ** 2)) > 35
    child, mpp = D.load_packed(out)
    assert child.shape == (n, PATCH, PATCH, 3) and mpp.dtype == np.float32
    ds = D.PatchDataset(out)
    assert len(ds) == n


def test_cli_pack_and_stats(data_dir, tmp_path, capsys):
    out = tmp_path / "train.npz"
    rc = D.main(["pack", "--data-dir", str(data_dir), "--out", str(out), "--split", "train",
                 "--patch", str(PATCH), "--count", "30"])
    assert rc == 0 and out.is_file()
    assert "per source" in capsys.readouterr().out
    assert D.main(["stats", str(out)]) == 0
    assert "per band" in capsys.readouterr().out
