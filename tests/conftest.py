"""Shared fixtures: a tiny random-weight denoiser, a painter, and a tile service on a temp cache."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from cache.store import TileStore
from cascade.model import CascadeDenoiser
from cascade.painter import MetatilePainter
from cascade.roots import ProceduralRoot
from cascade.sampler import training_scheduler
from tests.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures shared by every module)
from tileserver.app import create_app
from tileserver.settings import Settings
from tileserver.tiles import TileService, ZoomRange
from tileserver.worlds import World

TINY_CONFIG = dict(channels=(8, 16), blocks=(1, 1), context_channels=(8, 8, 16), context_blocks=(1, 1, 1), emb_dim=16)


def make_tiny_model(seed: int = 0) -> CascadeDenoiser:
    """A tiny model with random weights everywhere (the zero-initialised output layers too), so
    every convolution influences the output and locality is really exercised."""
    torch.manual_seed(seed)
    model = CascadeDenoiser(**TINY_CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model() -> CascadeDenoiser:
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """The tiny random model saved like the shipped weights, for server processes to load."""
    path = tmp_path_factory.mktemp("weights")
    make_tiny_model().save_pretrained(path, safe_serialization=True)
    training_scheduler().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> str:
    """`test=image:PATH` with a 512x256 equirectangular image: its root is zoom 1."""
    path = tmp_path_factory.mktemp("world") / "root.png"
    rng = np.random.default_rng(5)
    coarse = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((512, 256), Image.BICUBIC).save(path)
    return f"test=image:{path}"


@pytest.fixture
def painter(tiny_model) -> MetatilePainter:
    return MetatilePainter(tiny_model, dict(training_scheduler().config), steps=2)


@pytest.fixture(scope="session")
def small_root() -> ProceduralRoot:
    """A procedural planet whose root stops at zoom 1, so a few stages are painted quickly."""
    return ProceduralRoot(seed=3, root_zoom=1)


def make_service(cache_dir, painter, root, maxzoom: int = 12) -> TileService:
    worlds = {"test": World(name="test", spec="procedural:3", root=root, seed=3)}
    return TileService(worlds, TileStore(cache_dir), painter, ZoomRange(0, maxzoom))


def tiny_service(cache_dir, model: CascadeDenoiser, maxzoom: int) -> TileService:
    """A service on a fresh cache: the tiny model with 2 steps over a zoom-1 procedural root."""
    painter = MetatilePainter(model, dict(training_scheduler().config), steps=2)
    return make_service(cache_dir, painter, ProceduralRoot(seed=3, root_zoom=1), maxzoom)


@contextlib.contextmanager
def app_client(service: TileService, maxzoom: int, **settings):
    """A TestClient (lifespan running) for the app around `service`; `settings` override the defaults."""
    with TestClient(create_app(Settings(maxzoom=maxzoom, **settings), service=service)) as client:
        yield client


@pytest.fixture
def service(tmp_path, painter, small_root) -> TileService:
    svc = make_service(tmp_path / "cache", painter, small_root)
    yield svc
    svc.store.close()


@pytest.fixture(scope="module")
def module_service(tmp_path_factory, tiny_model, request) -> TileService:
    """One service per test module, zoom range from the module's MAXZOOM."""
    svc = tiny_service(tmp_path_factory.mktemp("cache"), tiny_model, request.module.MAXZOOM)
    yield svc
    svc.store.close()


@pytest.fixture(scope="module")
def module_client(module_service, request):
    with app_client(module_service, request.module.MAXZOOM) as client:
        yield client
