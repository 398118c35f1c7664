"""The bad-input matrix: every kind of bad user input, through the user-facing entry, in one place.

Each CLI case runs `pipeline.run.launch(argv)` (what `python -m pipeline` calls) and asserts
- exit code 2 and an `error: ...` line on stderr that says what is wrong AND how to fix it,
- that it failed before any pipeline ran: `beam.Pipeline.run` is never reached, Earth Engine got no
  request and nothing was written under --output.
`input_chw` arrays go through the embedder (`models.DynamicVisEmbedder.embed`), the Python API's model path.
Library-level edge cases of each parser live in tests/test_tiles_*.py and tests/test_model_checkpoint.py;
this file checks that each kind reaches the user as a clear message, fast. The quick cases first need no
fake Earth Engine: only that validation stops before a pipeline is built.
"""
from __future__ import annotations

import json
import os

import apache_beam as beam
import numpy as np
import pytest
import torch

from pipeline.run import launch
from tests.fixtures.malicious import EvalViaGetattr, WritesMarker

BBOX = "8.0,47.0,8.003,47.002"
TIME = ["--start", "2024-06-01", "--end", "2024-07-01"]
BOWTIE = {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]}



@pytest.fixture
def launch_refused(fake_ee, model_cache, tmp_path, monkeypatch, capsys):
    """launch(argv) -> the stderr message, asserting exit 2 and that no pipeline ran, no EE request was made."""
    from pipeline.run import launch

    def never_run(self, *args, **kwargs):  # the pipeline must not start for bad input
        raise AssertionError("the pipeline started although the input is bad")

    monkeypatch.setattr(beam.Pipeline, "run", never_run)

    def run(argv):
        capsys.readouterr()
        code = launch([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2, f"exit code {code}, stderr: {err}"
        assert err.startswith("error: ") and "Traceback" not in err, err
        assert fake_ee.server.calls == [], "Earth Engine was called for bad input"
        return err

    return run


@pytest.fixture
def argv(fake_ee, recipe_checkpoint_b64, tmp_path):
    """A valid command line (small tiles, img 64, the fake EE server); `argv(**changes)` replaces flags."""
    base = {"--bbox": BBOX, "--start": "2024-06-01", "--end": "2024-07-01", "--output": tmp_path / "out",
            "--tile-px": 32, "--img-size": 64, "--ee-endpoint": fake_ee.server.url,
            "--ee-credentials": "anonymous", "--ee-project": "test-project",
            "--checkpoint": recipe_checkpoint_b64, "--max-batch-size": 8}

    def make(*extra, **changes):
        flags = dict(base)
        for name, value in changes.items():
            flag = "--" + name.replace("_", "-")
            if value is None:
                flags.pop(flag, None)
            else:
                flags[flag] = value
        out = []
        for flag, value in flags.items():
            out += [f"{flag}={value}"] if flag == "--bbox" else [flag, value]
        return out + list(extra)

    return make


def _write(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _assert_nothing_written(output):
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(output) for f in files] if os.path.isdir(output) else []
    assert not [f for f in leftovers if "embeddings-" in f or "beam-temp" in f or f.endswith(".jsonl")], leftovers


# ------------------------------------------------------------------------------ quick cases, no fake EE

@pytest.fixture
def no_pipeline(monkeypatch):
    """Any attempt to build a pipeline fails the test: validation must stop first."""
    import pipeline.run as cli

    def forbidden(*_args, **_kwargs):
        raise AssertionError("a pipeline was started")

    monkeypatch.setattr(cli, "run", forbidden)


@pytest.mark.parametrize("argv, message", [
    (["--bbox", "8,47.1,8.1,47.0", *TIME], "S"),                                  # south >= north
    (["--bbox", "8,47,8,47.1", *TIME], "W"),                                      # zero width
    (["--bbox", "8,95,9,96", *TIME], "lat"),                                      # latitude out of range
    (["--bbox", "190,40,191,41", *TIME], "lon"),                                  # longitude out of range
    (["--bbox", "8,47,8.1,47.1", "--start", "2024-07-01", "--end", "2024-06-01"], "--end"),
    (["--bbox", "8,47,8.1,47.1", "--start", "2024-06-01"], "--end"),
    (["--bbox", "8,47,8.1,47.1", *TIME, "--frobnicate", "3"], "unknown option"),
    ([*TIME], "region is required"),
    (["--geojson", "/nonexistent/area.geojson", *TIME], "area.geojson"),
    (["--bbox", "8,47,8.1,47.1", *TIME, "--img-size", "50"], "img_size"),
    (["--bbox", "8,47,8.1,47.1", *TIME, "--checkpoint", "hf://only-repo"], "hf://OWNER/REPO/FILE"),
    (["--bbox", "8,47,8.1,47.1", *TIME, "--bigquery-table", "not a table"], "PROJECT:DATASET.TABLE"),
    (["--bbox", "8,47,8.1,47.1", *TIME, "--min-batch-size", "8", "--max-batch-size", "4"], "--max-batch-size"),
])
def test_bad_input_fails_before_the_pipeline_with_a_fix(argv, message, tmp_path, capsys, no_pipeline):
    assert launch([*argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.lower() in err.lower(), err


def test_empty_geojson_region_is_refused(tmp_path, capsys, no_pipeline):
    path = tmp_path / "empty.geojson"
    path.write_text('{"type": "FeatureCollection", "features": []}')
    assert launch(["--geojson", str(path), *TIME, "--output", str(tmp_path / "o")]) == 2
    assert "empty.geojson" in capsys.readouterr().err


def test_unreadable_geojson_is_refused(tmp_path, capsys, no_pipeline):
    path = tmp_path / "broken.geojson"
    path.write_text("{not json")
    assert launch(["--geojson", str(path), *TIME, "--output", str(tmp_path / "o")]) == 2
    assert "broken.geojson" in capsys.readouterr().err


def test_output_is_required_unless_dry_run(capsys, no_pipeline):
    assert launch(["--bbox", "8,47,8.1,47.1", *TIME]) == 2
    assert "--output" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- regions

@pytest.mark.parametrize("case, changes, expected", [
    ("inverted bbox", {"bbox": "8,47.1,8.01,47.0"}, ["south 47.1 must be less than north 47", "W,S,E,N"]),
    ("bbox out of range", {"bbox": "-190,47,8,47.1"}, ["west longitude -190 is outside [-180, 180]"]),
    ("bbox latitude out of range", {"bbox": "8,-95,8.1,47"}, ["south latitude -95 is outside [-90, 90]"]),
    ("empty bbox", {"bbox": "8,47,8,47.1"}, ["west and east are both 8", "no width", "W,S,E,N"]),
    ("bbox not numbers", {"bbox": "8,47,east,47.1"}, ["must be four numbers W,S,E,N"]),
    ("bbox outside UTM", {"bbox": "8,85,8.1,86"}, ["entirely outside the UTM latitudes -80..84"]),
    ("no region", {"bbox": None}, ["a region is required", "--bbox W,S,E,N", "--geojson", "--points"]),
])
def test_bad_regions(case, changes, expected, launch_refused, argv, tmp_path):
    err = launch_refused(argv(**changes))
    for fragment in expected:
        assert fragment in err, (case, err)
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("case, content, expected", [
    ("self-intersecting polygon", BOWTIE, ["invalid Polygon (Self-intersection", "fix it", "make_valid"]),
    ("empty FeatureCollection", {"type": "FeatureCollection", "features": []}, ["has no features"]),
    ("empty polygon", {"type": "Polygon", "coordinates": []}, ["Polygon is empty"]),
    ("a point is not an area", {"type": "Point", "coordinates": [8, 47]},
     ["'Point' is not supported", "use Polygon or MultiPolygon"]),
    ("not JSON", "{this is not json", ["not valid JSON"]),
])
def test_bad_geojson(case, content, expected, launch_refused, argv, tmp_path):
    path = _write(tmp_path / "region.geojson", content)
    err = launch_refused(argv(bbox=None, geojson=path))
    assert str(path) in err, err
    for fragment in expected:
        assert fragment in err, (case, err)


def test_points_file_with_bad_rows_names_every_bad_line(launch_refused, argv, tmp_path):
    path = _write(tmp_path / "points.csv", "lon,lat,id\n8.0,47.0,ok\n8.0,north,bad1\n200,47,bad2\n8.0,47.0,a b\n")
    err = launch_refused(argv(bbox=None, points=path, buffer_m=0))
    assert f"{path}: 3 bad row(s)" in err and "expected lon,lat[,id]" in err
    for line in ("line 3", "line 4", "line 5"):
        assert line in err, err


def test_points_without_buffer_says_which_flag(launch_refused, argv, tmp_path):
    path = _write(tmp_path / "points.csv", "8.0,47.0\n")
    err = launch_refused(argv(bbox=None, points=path))
    assert "--points needs --buffer-m" in err


# ----------------------------------------------------------------------------------------------- dates

@pytest.mark.parametrize("case, changes, expected", [
    ("malformed start", {"start": "2024-13-01"}, ["--start '2024-13-01' is not a valid date", "YYYY-MM-DD"]),
    ("malformed end", {"end": "1/7/2024"}, ["--end '1/7/2024' is not a valid date", "YYYY-MM-DD"]),
    ("end before start", {"start": "2024-07-01", "end": "2024-06-01"},
     ["--end 2024-06-01 must be after --start 2024-07-01", "end is exclusive"]),
    ("empty window", {"end": "2024-06-01"}, ["must be after --start", "--end 2024-06-02"]),
    ("future", {"end": "2099-01-01"}, ["end 2099-01-01 is in the future", "latest allowed end is --end"]),
    ("before Sentinel-2", {"start": "2010-01-01"}, ["before Sentinel-2 surface reflectance is available"]),
    ("no dates", {"start": None, "end": None}, ["a time range is required", "--start YYYY-MM-DD", "--year"]),
    ("year and range", {"year": 2023}, ["either --year or --start/--end, not both"]),
])
def test_bad_dates(case, changes, expected, launch_refused, argv):
    err = launch_refused(argv(**changes))
    for fragment in expected:
        assert fragment in err, (case, err)


# --------------------------------------------------------------------------------------------- options

@pytest.mark.parametrize("case, changes, extra, expected", [
    ("batch size 0", {"max_batch_size": 0}, [], ["--max-batch-size must be >= 1, got 0"]),
    ("min batch size 0", {"min_batch_size": 0}, [], ["--min-batch-size must be >= 1, got 0"]),
    ("min above max batch", {"min_batch_size": 9}, [], ["--max-batch-size must be >= 9, got 8"]),
    ("unknown scan", {"scan": "fastest"}, [], ["unknown scan backend 'fastest'", "choose one of", "reference"]),
    ("unknown runner", {}, ["--runner", "SpeedyRunner"],
     ["--runner 'SpeedyRunner'", "DirectRunner", "DataflowRunner"]),
    ("unknown flag", {}, ["--bath-size", "4"], ["unknown option(s): --bath-size", "--help"]),
    ("tile px 0", {"tile_px": 0}, [], ["--tile-px must be >= 8, got 0"]),
    ("img size not a multiple of 32", {"img_size": 100}, [], ["img_size=100", "multiple of 32"]),
    ("unknown arch", {"arch": "xl"}, [], ["arch='xl'", "use one of"]),
    ("negative scale", {"scale_m": -10}, [], ["--scale-m must be > 0"]),
    ("bad composite", {"composite": "mean"}, [], ["composite must be one of", "median"]),
    ("anonymous without project", {"ee_project": None}, [], ["anonymous needs an explicit EE project",
                                                              "--ee-project"]),
    ("missing key file", {"ee_credentials": "/nonexistent/key.json"}, [],
     ["--ee-credentials", "neither 'adc', 'anonymous' nor a readable key file"]),
    ("key file in GCS", {"ee_credentials": "gs://bucket/key.json"}, [],
     ["--ee-credentials 'gs://bucket/key.json'", "must be a local path", "'adc'"]),
    ("bad BigQuery table", {"bigquery_table": "just_a_table"}, [], ["expected PROJECT:DATASET.TABLE"]),
])
def test_bad_options(case, changes, extra, expected, launch_refused, argv):
    err = launch_refused(argv(*extra, **changes))
    for fragment in expected:
        assert fragment in err, (case, err)


# ----------------------------------------------------------------------------------------- checkpoints

def _truncated(tmp_path, good):
    data = good.read_bytes()
    return _write_bytes(tmp_path / "truncated.pth", data[: len(data) // 3])


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


def _malicious(tmp_path, _good):
    """A zip checkpoint whose pickle would run a shell command, in a tensor slot and in metadata."""
    from models.recipe import recipe_state_dict

    state = {f"backbone.{k}": v for k, v in recipe_state_dict("b", 64).items()}
    state["backbone.pos_embed"] = WritesMarker(tmp_path / "pwned")
    path = tmp_path / "dynamicvis_b_evil.pth"
    torch.save({"state_dict": state, "meta": {"hook": WritesMarker(tmp_path / "pwned")}}, path)
    return path



def _malicious_eval(tmp_path, _good):
    """os.system in metadata and in place of pos_embed, and eval reached through builtins.getattr."""
    from models.recipe import recipe_state_dict

    state = {f"backbone.{k}": v for k, v in recipe_state_dict("b", 64).items()}
    state["backbone.pos_embed"] = WritesMarker(tmp_path / "pwned")
    path = tmp_path / "dynamicvis_b_evil_eval.pth"
    torch.save({"state_dict": state, "meta": {"hook": WritesMarker(tmp_path / "pwned"),
                                              "cfg": EvalViaGetattr(tmp_path / "pwned")}}, path)
    return path


def _raw_pickle(tmp_path, _good):
    import pickle

    return _write_bytes(tmp_path / "evil.pkl", pickle.dumps({"state_dict": WritesMarker(tmp_path / "pwned")}))


def _resnet(tmp_path, _good):
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(2, 3, 3, 3)}}, path)
    return path


REFUSAL = ["error: --checkpoint: refused", "its pickle", "would have run code", "nothing ran",
           "official checkpoint", ".safetensors"]


@pytest.mark.parametrize("case, make, extra, expected", [
    ("truncated", _truncated, {}, ["--checkpoint", "truncated", "re-download"]),
    ("not a checkpoint", lambda t, g: _write_bytes(t / "page.pth", b"<html>404 Not Found</html>"), {},
     ["--checkpoint", "could not read", "not a .pth checkpoint"]),
    ("empty file", lambda t, g: _write_bytes(t / "empty.pth", b""), {}, ["--checkpoint", "could not read"]),
    ("wrong arch", lambda t, g: g, {"arch": "l"},
     ["does not match DynamicVis arch 'l'", "set arch='b' (or 'auto')"]),
    ("another model's weights", _resnet, {}, ["no DynamicVis backbone weights", "is this a DynamicVis checkpoint"]),
    ("pickle that runs code", _malicious, {}, [*REFUSAL, f"{os.system.__module__}.system"]),
    ("eval through getattr", _malicious_eval, {},
     [*REFUSAL, f"{os.system.__module__}.system", "builtins.__import__",
      "calls what builtins.getattr(…, 'eval') returned"]),
    ("raw pickle that runs code", _raw_pickle, {}, [*REFUSAL, f"{os.system.__module__}.system"]),
    ("missing file", lambda t, g: t / "nope.pth", {}, ["checkpoint file not found", "hf://OWNER/REPO/FILE"]),
    ("bad hf uri", lambda t, g: "hf://KyanChen", {}, ["expected hf://OWNER/REPO/FILE"]),
])
def test_bad_checkpoints(case, make, extra, expected, launch_refused, argv, recipe_checkpoint_b64, tmp_path):
    checkpoint = make(tmp_path, recipe_checkpoint_b64)
    err = launch_refused(argv(checkpoint=checkpoint, **extra))
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    for fragment in expected:
        assert fragment in line, (case, err)  # all of it on the one error line
    assert not (tmp_path / "pwned").exists(), "pickled code was executed"
    _assert_nothing_written(tmp_path / "out")


# --------------------------------------------------------------------------------------------- outputs

def test_output_under_a_file_is_refused(launch_refused, argv, tmp_path):
    blocker = _write(tmp_path / "a_file", "not a directory")
    err = launch_refused(argv(output=blocker / "out"))
    assert f"--output {blocker / 'out'}" in err and "not writable" in err and "choose" in err


def test_output_that_is_a_file_is_refused(launch_refused, argv, tmp_path):
    path = _write(tmp_path / "out.parquet", "x")
    err = launch_refused(argv(output=path))
    assert f"--output {path}" in err and "not a directory" in err
    assert path.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_read_only_output_is_refused(launch_refused, argv, tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o500)
    err = launch_refused(argv(output=read_only / "out"))
    assert "not writable" in err


def test_non_empty_output_needs_skip_existing(launch_refused, argv, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    shard = _write(output / "embeddings-20240101T000000-abcdef-00000-of-00001.parquet", "rows of an earlier run")
    err = launch_refused(argv(output=output))
    assert f"--output {output} already holds 1 embedding shard(s)" in err
    assert "--skip-existing" in err and "empty --output" in err
    assert shard.read_text() == "rows of an earlier run"


def test_missing_output(launch_refused, argv):
    err = launch_refused(argv(output=None))
    assert "--output is required" in err and "--dry-run" in err


# ------------------------------------------------------------------------------------------ input_chw

@pytest.fixture(scope="module")
def model_config(recipe_checkpoint_b64, tmp_path_factory):
    import models

    return models.ModelConfig(checkpoint=str(recipe_checkpoint_b64), img_size=64, device="cpu", scan="reference",
                              cache_dir=str(tmp_path_factory.mktemp("cache")))


def _embed(model_config, chw):
    """The card's Python API with a caller's array: `pipeline.get_embedding(..., input_chw=...)`."""
    import pipeline

    return pipeline.get_embedding("dynamicvis", input_chw=chw, model_config=model_config,
                                  temporal=pipeline.TemporalSpec.range("2024-06-01", "2024-07-01")).data


def _tile(shape=(3, 32, 32)):
    return np.random.default_rng(0).integers(0, 3000, size=shape).astype(np.float32)


@pytest.mark.parametrize("case, chw, expected", [
    ("2-D (no band axis)", _tile((32, 32)), ["(3, H, W)", "got shape (32, 32)"]),
    ("4-D (a batch given as one tile)", _tile((1, 3, 32, 32)), ["(3, H, W)", "got shape (1, 3, 32, 32)"]),
    ("wrong band count", _tile((4, 32, 32)), ["expected 3 bands (B4, B3, B2)", "got 4", "(4, 32, 32)"]),
    ("channels last", _tile((32, 32, 3)), ["expected 3 bands", "channels-first", "(32, 32, 3)"]),
    ("empty image", np.zeros((3, 0, 32), np.float32), ["empty image", "(3, 0, 32)"]),
    ("not numbers", np.full((3, 8, 8), "x"), ["numeric array of raw reflectance"]),
])
def test_bad_input_chw_is_refused_naming_the_shape_given(case, chw, expected, model_config):
    from pipeline.errors import SpecError

    with pytest.raises(SpecError) as raised:  # a ValueError
        _embed(model_config, chw)
    for fragment in expected:
        assert fragment in str(raised.value), (case, str(raised.value))


@pytest.mark.parametrize("case, poison, replacement", [
    ("NaN (masked pixels)", np.nan, 0.0),
    ("negative reflectance", -250.0, 0.0),
    ("+inf", np.inf, 10000.0),
    ("-inf", -np.inf, 0.0),
])
def test_non_finite_and_negative_input_chw_follow_the_card(case, poison, replacement, model_config):
    """The card's preprocessing (rs-embed parity, golden-tested) maps NaN to 0 and clips to 0..10000: such
    pixels give exactly the embedding of the cleaned array, never NaN vectors."""
    clean = _tile()
    poisoned, cleaned = clean.copy(), clean.copy()
    poisoned[:, :4, :4] = poison
    cleaned[:, :4, :4] = replacement
    got = _embed(model_config, poisoned)
    assert got.shape == (768,) and np.isfinite(got).all(), case
    np.testing.assert_array_equal(got, _embed(model_config, cleaned))
