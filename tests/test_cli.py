"""The command line: one-shot tiles, resumable top-down prefetch, clear errors, settings from the environment."""

import io
import shutil
import socket

import numpy as np
import pytest
import torch
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

    def spy(self, seed, parents, parent_pixels, **kwargs):
        painted.append([p.z for p in parents])
        return original(self, seed, parents, parent_pixels, **kwargs)

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
    with pytest.raises(SystemExit, match="2"):
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


def test_cold_wait_from_flag_and_environment(monkeypatch):
    from tileserver.cli import build_parser, settings_from_args

    assert Settings().cold_wait == 5
    assert Settings.from_env({"TILESERVER_COLD_WAIT": "2.5"}).cold_wait == 2.5
    monkeypatch.setenv("TILESERVER_COLD_WAIT", "7")
    assert settings_from_args(build_parser().parse_args(["serve"])).cold_wait == 7
    flagged = settings_from_args(build_parser().parse_args(["serve", "--cold-wait", "0"]))
    assert flagged.cold_wait == 0  # the flag wins, and 0 (wait for the paint) is kept, not taken for unset
    assert Settings.from_env(flagged.to_env()).cold_wait == 0  # as the worker processes read it


def test_colour_drift_from_flag_and_environment(monkeypatch):
    from tileserver.cli import build_parser, settings_from_args

    assert Settings().colour_drift is None  # as recommended with the weights
    monkeypatch.setenv("TILESERVER_COLOUR_DRIFT", "0.5")
    assert settings_from_args(build_parser().parse_args(["serve"])).colour_drift == 0.5
    flagged = settings_from_args(build_parser().parse_args(["serve", "--colour-drift", "0"]))
    assert flagged.colour_drift == 0  # the flag wins, and 0 (exact parent means) is kept, not taken for unset
    assert Settings.from_env(flagged.to_env()).colour_drift == 0  # as the worker processes read it


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


# ---------------------------------------------------------------- start-up errors: one line, exit code 2


@pytest.fixture
def no_server(monkeypatch):
    """`serve` must fail before the server starts; should it get that far, fail the test instead of serving."""
    import uvicorn

    def started(*args, **kwargs):
        raise AssertionError("the server started despite a bad start-up setting")

    monkeypatch.setattr(uvicorn, "run", started)


def fails_in_one_line(argv, capsys, *expected: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def damaged_weights(weights, tmp_path):
    path = tmp_path / "damaged"
    shutil.copytree(weights, path)
    safetensors = path / "diffusion_pytorch_model.safetensors"
    safetensors.write_bytes(safetensors.read_bytes()[:3000])  # truncated
    return path


@pytest.fixture
def truncated_root(tmp_path):
    path = tmp_path / "atlas.png"
    image = np.random.default_rng(1).integers(0, 256, (256, 512, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    path.write_bytes(path.read_bytes()[:20000])
    return path


def test_serve_start_up_errors_are_one_line(tmp_path, weights, damaged_weights, truncated_root, busy_port, capsys,
                                            no_server):
    serve = ["serve", "--cache-dir", str(tmp_path / "c"), "--port", "0", "--weights", str(weights)]
    fails_in_one_line([*serve, "--world", "x=mars"], capsys, "mars")
    fails_in_one_line([*serve, "--world", "static=procedural:1"], capsys, "static")
    fails_in_one_line([*serve, "--world", "health=procedural:1"], capsys, "health")
    fails_in_one_line([*serve, "--world", f"atlas=image:{truncated_root}"], capsys, str(truncated_root))
    fails_in_one_line([*serve, "--world", f"atlas=image:{tmp_path / 'deleted.png'}"], capsys, "deleted.png")
    fails_in_one_line([*serve, "--world", "w=procedural:1", "--weights", str(damaged_weights)], capsys,
                      "cannot load the model weights", str(damaged_weights))
    fails_in_one_line([*serve, "--world", "w=procedural:1", "--weights", str(truncated_root)], capsys,
                      "no model weights")
    fails_in_one_line([*serve, "--port", "99999"], capsys, "port", "99999")
    fails_in_one_line([*serve, "--cold-wait", "-1"], capsys, "cold-wait must be a number of seconds, 0 or more", "-1")
    fails_in_one_line([*serve, "--port", str(busy_port)], capsys, f"cannot listen on 127.0.0.1:{busy_port}")
    if not torch.cuda.is_available():
        fails_in_one_line([*serve, "--world", "w=procedural:1", "--device", "cuda"], capsys, "cuda", "no CUDA GPU")


@pytest.mark.parametrize("variable,value,expected", [
    ("TILESERVER_WORLDS", "", "no world to serve"),
    ("TILESERVER_WORLDS", " ; ", "no world to serve"),
    ("TILESERVER_UNVERSIONED_MAX_AGE", "-1", "max-age must not be negative"),
    ("TILESERVER_TILE_MAX_AGE", "-5", "max-age must not be negative"),
    ("TILESERVER_COLD_WAIT", "-0.5", "cold-wait must be a number of seconds, 0 or more"),
    ("TILESERVER_COLD_WAIT", "soon", "could not convert"),
    ("TILESERVER_COLOUR_DRIFT", "1.5", "colour drift must be in [0, 1]"),
])
def test_bad_environment_is_one_line(variable, value, expected, monkeypatch, capsys, no_server):
    monkeypatch.setenv(variable, value)
    fails_in_one_line(["serve", "--port", "0"], capsys, variable, expected)


def test_tile_outside_the_pyramid_is_one_line(tmp_path, weights, capsys):
    tile = ["tile", "w=procedural:5", "--cache-dir", str(tmp_path / "c"), "--weights", str(weights), "-o",
            str(tmp_path / "x.png")]
    fails_in_one_line([*tile[:2], "30", "0", "0", *tile[2:]], capsys, "no tile 30/0/0", "zoom 30")
    fails_in_one_line([*tile[:2], "3", "8", "0", *tile[2:]], capsys, "no tile 3/8/0")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("form", [["--bbox", "-123,37,-122,38"], ["--bbox=-123,37,-122,38"]])
def test_negative_bbox_is_a_value_not_an_option(form, tmp_path):
    from tileserver.cli import _negative_values_attached, build_parser

    for command in (["prefetch", "--world", "earth", "--zoom", "5-6"],
                    ["export", "--world", "earth", "--zoom", "5-6", "-o", "sf.mbtiles"]):
        args = build_parser().parse_args(_negative_values_attached([*command, *form]))
        assert args.bbox == (-123.0, 37.0, -122.0, 38.0)
    args = build_parser().parse_args(_negative_values_attached(["prefetch", "--world", "earth", "--zoom", "5",
                                                                "--bbox", "-10.5,-20,-5,-1"]))
    assert args.bbox == (-10.5, -20.0, -5.0, -1.0)


def test_prefetch_with_a_western_bbox_runs(tmp_path, weights):
    assert main(["-q", "prefetch", "--world", "w=procedural:5", "--bbox", "-123,37,-122,38", "--zoom", "3-4",
                 "--dry-run", "--cache-dir", str(tmp_path / "c"), "--weights", str(weights)]) == 0


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
