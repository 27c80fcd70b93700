"""The command line: one-shot tiles, resumable top-down prefetch, clear errors, settings from the environment."""

import io

import pytest
from PIL import Image

from cascade.painter import MetatilePainter
from cascade.sampler import training_scheduler
from tileserver.cli import main
from tileserver.settings import Settings
from tests.conftest import make_tiny_model


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "weights"
    make_tiny_model().save_pretrained(path, safe_serialization=True)
    training_scheduler().save_pretrained(path)
    return path


def test_tile_command_writes_a_png(tmp_path, weights):
    out = tmp_path / "t.png"
    assert main(["-q", "tile", "w=procedural:5", "5", "3", "9", "-o", str(out), "--cache-dir", str(tmp_path / "c"),
                 "--weights", str(weights), "--steps", "1"]) == 0
    img = Image.open(io.BytesIO(out.read_bytes()))
    assert img.size == (256, 256) and img.mode == "RGB"


def test_prefetch_is_top_down_and_resumable(tmp_path, weights, monkeypatch):
    painted = []
    original = MetatilePainter.paint

    def spy(self, seed, parents, parent_pixels):
        painted.append([p.z for p in parents])
        return original(self, seed, parents, parent_pixels)

    monkeypatch.setattr(MetatilePainter, "paint", spy)
    args = ["-q", "prefetch", "--world", "w=procedural:5", "--bbox", "10,40,12,42", "--zoom", "3-6",
            "--cache-dir", str(tmp_path / "c"), "--weights", str(weights), "--steps", "1"]
    assert main(args) == 0
    zooms = [z for batch in painted for z in batch]
    assert zooms and zooms == sorted(zooms)  # parents before children
    painted.clear()
    assert main(args) == 0
    assert painted == []  # everything was stored already


@pytest.mark.parametrize("bad", [["--bbox", "10,40,5,42"], ["--zoom", "5-3"], ["--zoom", "a"]])
def test_prefetch_rejects_bad_arguments(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prefetch", "--world", "earth", "--zoom", "1-2", *bad])
    assert exit_info.value.code == 2


def test_bad_world_spec_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["tile", "w=mars", "1", "0", "0", "-o", str(tmp_path / "x.png"), "--cache-dir", str(tmp_path / "c")])
    assert "mars" in capsys.readouterr().err


def test_settings_from_environment():
    s = Settings.from_env({"TILESERVER_PORT": "9000", "TILESERVER_WORLDS": "a=earth; b=procedural:2",
                           "TILESERVER_CACHE_DIR": "/tmp/x", "TILESERVER_STEPS": "3"})
    assert s.port == 9000 and s.worlds == ("a=earth", "b=procedural:2") and s.steps == 3
    with pytest.raises(ValueError, match="TILESERVER_PORT"):
        Settings.from_env({"TILESERVER_PORT": "eighty"})
    with pytest.raises(ValueError, match="zoom range"):
        Settings(minzoom=5, maxzoom=2)


def test_unreachable_store_is_one_clear_line(tmp_path, weights, capsys, postgres_server):
    url = postgres_server.url("missing_db")
    with pytest.raises(SystemExit) as exit_info:
        main(["tile", "w=procedural:5", "3", "0", "0", "-o", str(tmp_path / "x.png"), "--store", url,
              "--weights", str(weights)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "missing_db" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_store_flag_and_environment(monkeypatch):
    from tileserver.cli import build_parser, settings_from_args

    monkeypatch.setenv("TILESERVER_STORE", "postgresql://u@h:5432/env")
    args = build_parser().parse_args(["serve", "--cache-dir", "/tmp/c"])
    assert settings_from_args(args).store == "postgresql://u@h:5432/env"
    args = build_parser().parse_args(["serve", "--store", "postgresql://u@h:5432/flag"])
    assert settings_from_args(args).store == "postgresql://u@h:5432/flag"
    with pytest.raises(ValueError, match="postgresql://"):
        Settings(store="mysql://x")


@pytest.mark.parametrize("argv, usage", [
    (["evaluate", "--max-patches", "3", "--help"], "usage: tileserver evaluate"),
    (["-q", "evaluate", "--realism", "--help"], "usage: python -m cascade.training.realism"),
    (["train", "--help"], "usage:"),
])
def test_train_and_evaluate_pass_every_argument_on(argv, usage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(usage)
