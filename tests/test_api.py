"""The card's Python API against the fake Earth Engine server and a recipe checkpoint (small model):
its containers, metadata, signatures, errors and the README's example."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline
from models.runtime import resolve_precision
from pipeline import BBox, OutputSpec, PointBuffer, SensorSpec, TemporalSpec
from pipeline.errors import ModelError, ProviderError, SpecError

README = Path(__file__).resolve().parents[1] / "README.md"
TEMPORAL = TemporalSpec.range("2022-06-01", "2022-09-01")
CARD_KEYS = ("model", "arch", "path_type", "sampling_scale", "mamba2", "image_size", "hf_repo", "ckpt_file",
             "ckpt_sha256", "feature_kind", "pooling", "grid_kind", "grid_hw", "grid_shape", "pool_source",
             "temporal", "sensor")
OUR_KEYS = ("scan", "precision", "tile_id", "crs", "transform", "n_scenes", "valid_fraction")


@pytest.fixture
def config(recipe_checkpoint_b64, model_cache):
    import models

    return models.ModelConfig(checkpoint=str(recipe_checkpoint_b64), img_size=64)


def test_pooled_embedding_of_a_point_equals_the_model_on_the_fetched_tile(fake_ee, config):
    import earth_engine
    import models
    from tiles.records import TileRequest

    spatial = PointBuffer(lon=121.5, lat=31.2, buffer_m=160)
    emb = pipeline.get_embedding("dynamicvis", spatial=spatial, temporal=TEMPORAL, output=OutputSpec.pooled(),
                                 backend="gee", ee_settings=fake_ee.settings, model_config=config)
    tile = pipeline.api.tile_for(spatial)
    (pixels,) = earth_engine.fetch_tiles([TileRequest(tile, TEMPORAL.window)], earth_engine.S2Settings(),
                                         fake_ee.settings)
    direct = models.DynamicVisEmbedder(config).embed(pixels.chw[None])["pooled"][0]
    assert emb.data.shape == (768,) and emb.data.dtype == np.float32
    np.testing.assert_allclose(emb.data, direct, rtol=1e-5, atol=1e-6)
    assert emb.meta["tile_id"] == tile.tile_id


def test_metadata_has_the_cards_keys_and_values(fake_ee, config, recipe_checkpoint_b64):
    emb = pipeline.get_embedding("dynamicvis", spatial=PointBuffer(8.0, 47.0, 160), temporal=TEMPORAL,
                                 output=OutputSpec.pooled("max"), ee_settings=fake_ee.settings, model_config=config)
    meta = emb.meta
    missing = [key for key in CARD_KEYS + OUR_KEYS if key not in meta]
    assert not missing, missing
    assert (meta["model"], meta["arch"], meta["image_size"]) == ("dynamicvis", "b", 64)
    assert (meta["path_type"], meta["sampling_scale"], meta["mamba2"]) == ("forward_reverse_mean", 0.1, False)
    assert meta["ckpt_sha256"] == hashlib.sha256(recipe_checkpoint_b64.read_bytes()).hexdigest()
    assert meta["ckpt_file"] == str(recipe_checkpoint_b64) and meta["hf_repo"] is None  # a local file
    assert (meta["feature_kind"], meta["pooling"]) == ("featmap", "featmap_max")
    assert meta["grid_kind"] == meta["pool_source"] == "last_stage_featmap"
    assert meta["grid_hw"] == (2, 2) and meta["grid_shape"] == (768, 2, 2) and meta["pooled_shape"] == (768,)
    assert meta["temporal"] == {"mode": "range", "start": "2022-06-01", "end": "2022-09-01"}
    assert meta["sensor"] == {"collection": "COPERNICUS/S2_SR_HARMONIZED", "bands": ["B4", "B3", "B2"],
                              "scale_m": 10.0, "cloudy_pct": 30.0, "composite": "median"}
    assert meta["backend"] == "gee" and meta["scan"] in ("cpu_fused", "chunked")
    assert meta["precision"] == resolve_precision(config.precision, torch.device("cpu"))  # what really ran
    assert meta["crs"].startswith("EPSG:326") and len(meta["transform"]) == 6
    assert meta["n_scenes"] == fake_ee.server.n_scenes and 0 < meta["valid_fraction"] <= 1


def test_grid_is_a_dataarray_named_embedding_with_integer_coords(fake_ee, config):
    import xarray as xr

    spatial = BBox(8.0, 47.0, 8.003, 47.002)
    emb = pipeline.get_embedding(spatial=spatial, temporal=TEMPORAL, output=OutputSpec.grid(),
                                 ee_settings=fake_ee.settings, model_config=config)
    grid = emb.data
    assert isinstance(grid, xr.DataArray) and grid.name == "embedding" and grid.dims == ("d", "y", "x")
    assert grid.shape == (768, 2, 2) and grid.dtype == np.float32  # img 64 / 32
    for dim, size in zip(grid.dims, grid.shape):
        assert grid[dim].dtype.kind == "i" and grid[dim].values.tolist() == list(range(size))
    assert grid.attrs["grid_kind"] == "last_stage_featmap" and grid.attrs["grid_shape"] == (768, 2, 2)
    assert emb.meta["pooling"] is None and emb.meta["feature_kind"] == "featmap"
    pooled = pipeline.get_embedding(spatial=spatial, temporal=TEMPORAL, ee_settings=fake_ee.settings,
                                    model_config=config)
    np.testing.assert_allclose(grid.mean(dim=("y", "x")).values, pooled.data, rtol=1e-5, atol=1e-6)


def test_year_default_window_and_auto_backend(fake_ee, config):
    spatial = PointBuffer(8.0, 47.0, 160)
    assert TemporalSpec.year(2022) == TemporalSpec(TemporalSpec.range("2022-01-01", "2023-01-01").start,
                                                   TemporalSpec.range("2022-01-01", "2023-01-01").end, "year")
    by_year = pipeline.get_embedding(spatial=spatial, temporal=TemporalSpec.year(2022), backend="auto",
                                     ee_settings=fake_ee.settings, model_config=config)
    assert by_year.meta["temporal"] == {"mode": "range", "start": "2022-01-01", "end": "2023-01-01"}
    assert fake_ee.server.calls[-1].dates[:2] == ("2022-01-01", "2023-01-01")
    default = pipeline.get_embedding(spatial=spatial, backend="auto", ee_settings=fake_ee.settings,
                                     model_config=config)
    assert pipeline.api.DEFAULT_TEMPORAL_RANGE == ("2022-06-01", "2022-09-01")
    assert default.meta["temporal"] == {"mode": "range", "start": "2022-06-01", "end": "2022-09-01"}
    assert fake_ee.server.calls[-1].dates[:2] == ("2022-06-01", "2022-09-01")
    explicit = pipeline.get_embedding(spatial=spatial, temporal=TEMPORAL, backend="gee",
                                      ee_settings=fake_ee.settings, model_config=config)
    np.testing.assert_array_equal(default.data, explicit.data)


def test_sensor_spec_serves_the_card_default_and_refuses_what_it_cannot(fake_ee, config):
    card = SensorSpec("COPERNICUS/S2_SR_HARMONIZED", ["B4", "B3", "B2"], 10, 30, "median")
    assert card == SensorSpec() and card.bands == ("B4", "B3", "B2")
    emb = pipeline.get_embedding(spatial=PointBuffer(8.0, 47.0, 160), temporal=TEMPORAL,
                                 sensor=SensorSpec(cloudy_pct=10, composite="mosaic"),
                                 ee_settings=fake_ee.settings, model_config=config)
    assert (emb.meta["sensor"]["cloudy_pct"], emb.meta["sensor"]["composite"]) == (10, "mosaic")
    for kwargs, fragment in [({"collection": "COPERNICUS/S2_HARMONIZED"}, "COPERNICUS/S2_SR_HARMONIZED only"),
                             ({"bands": ("B8", "B4", "B3")}, "('B4', 'B3', 'B2') in that order"),
                             ({"bands": ("B2", "B3", "B4")}, "cannot be served"),
                             ({"scale_m": 0}, "positive number"), ({"cloudy_pct": 101}, "[0, 100]"),
                             ({"composite": "mean"}, "median")]:
        with pytest.raises(SpecError, match=re.escape(fragment)):
            SensorSpec(**kwargs)


def test_errors_are_our_own_classes(fake_ee, config, tmp_path):
    assert issubclass(SpecError, ValueError) and issubclass(ProviderError, RuntimeError)
    assert issubclass(ModelError, RuntimeError)
    spatial = PointBuffer(8.0, 47.0, 160)
    for call, fragment in [
            (lambda: TemporalSpec.range("2022-13-01", "2022-09-01"), "is not a valid date"),
            (lambda: TemporalSpec.range("2022-09-01", "2022-06-01"), "must be after start"),
            (lambda: TemporalSpec.range("2015-01-01", "2015-06-01"), "before Sentinel-2"),
            (lambda: TemporalSpec.year("2022"), "expected a year"),
            (lambda: OutputSpec.pooled("median"), "'mean' or 'max'"),
            (lambda: pipeline.get_embedding("resnet", spatial=spatial), "not available here"),
            (lambda: pipeline.get_embedding(spatial=spatial, backend="local"), "'gee'"),
            (lambda: pipeline.get_embedding(spatial=PointBuffer(8.0, 47.0, 0)), "buffer_m must be > 0"),
            (lambda: pipeline.get_embedding(spatial=BBox(8.1, 47.0, 8.0, 47.1)), "minlon < maxlon"),
            (lambda: pipeline.get_embedding(spatial=(8.0, 47.0)), "PointBuffer or BBox"),
            (lambda: pipeline.get_embedding(input_chw=np.zeros((4, 8, 8)), model_config=config), "3 bands")]:
        with pytest.raises(SpecError, match=re.escape(fragment)):
            call()
    assert not fake_ee.server.calls
    with pytest.raises(ModelError, match="checkpoint file not found"):
        pipeline.get_embedding(spatial=spatial, temporal=TEMPORAL, ee_settings=fake_ee.settings,
                               model_config=config.replace(checkpoint=str(tmp_path / "missing.pth")))


def test_no_earth_engine_connection_is_a_provider_error_saying_what_to_do(fake_ee, config, monkeypatch, tmp_path):
    import ee

    from earth_engine import client

    monkeypatch.setattr(ee.data, "is_initialized", lambda: False)   # as in a fresh process
    monkeypatch.setattr(client, "_initialized_with", None)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-key.json"))
    with pytest.raises(ProviderError, match=r"could not connect to Earth Engine .*ee\.Initialize\(project=\.\.\.\)"):
        pipeline.get_embedding(spatial=PointBuffer(8.0, 47.0, 160), temporal=TEMPORAL, model_config=config)
    assert not fake_ee.server.calls


def test_batch_returns_one_per_spec_and_names_failures(fake_ee, config):
    from tiles.grid import tile_bounds_utm

    specs = [PointBuffer(8.0, 47.0, 160), PointBuffer(13.4, 52.52, 160)]
    embs = pipeline.get_embeddings_batch(spatials=specs, temporal=TEMPORAL, ee_settings=fake_ee.settings,
                                         model_config=config)
    assert len(embs) == 2 and embs[0].data.shape == embs[1].data.shape
    assert pipeline.get_embeddings_batch(spatials=[], model_config=config) == []
    empty = pipeline.api.tile_for(specs[1])
    fake_ee.server.add_empty_area(empty.crs, tile_bounds_utm(empty))
    with pytest.raises(ProviderError, match="NoScenesError") as error:
        pipeline.get_embeddings_batch(spatials=specs, temporal=TEMPORAL, ee_settings=fake_ee.settings,
                                      model_config=config)
    assert "13.4" in str(error.value) and "8.0" not in str(error.value).split("could not fetch:")[1]


def test_batch_honours_fetch_workers_within_the_earth_engine_budget(fake_ee, config, monkeypatch):
    from tests.fakes.ee_server import LatencyModel

    specs = [PointBuffer(6.0 + k, 47.0, 160) for k in range(6)]  # 1 degree apart: one request each
    fake_ee.server.reset(latency=LatencyModel(base_s=0.2))
    monkeypatch.setenv("RS_EMBED_DYNAMICVIS_FETCH_WORKERS", "2")
    embs = pipeline.get_embeddings_batch(spatials=specs, temporal=TEMPORAL, ee_settings=fake_ee.settings,
                                         model_config=config)
    assert len(embs) == 6 and len(fake_ee.server.calls) == 6
    assert fake_ee.server.max_in_flight == 2  # reached, never exceeded
    monkeypatch.setenv("RS_EMBED_DYNAMICVIS_FETCH_WORKERS", "500")
    assert pipeline.api.fetch_concurrency() == 40  # the project's concurrent-request limit
    monkeypatch.delenv("RS_EMBED_DYNAMICVIS_FETCH_WORKERS")
    assert pipeline.api.fetch_concurrency() == 8   # the adapter's default
    monkeypatch.setenv("RS_EMBED_DYNAMICVIS_FETCH_WORKERS", "many")
    with pytest.raises(SpecError, match="RS_EMBED_DYNAMICVIS_FETCH_WORKERS='many'"):
        pipeline.get_embeddings_batch(spatials=specs, temporal=TEMPORAL, ee_settings=fake_ee.settings,
                                      model_config=config)


def test_input_chw_path_embeds_without_fetching(fake_ee, config):
    chw = np.random.default_rng(1).integers(0, 4000, (3, 32, 32), dtype=np.uint16)
    emb = pipeline.get_embedding(temporal=TEMPORAL, input_chw=chw, output=OutputSpec.pooled("max"),
                                 model_config=config)
    assert emb.data.dtype == np.float32 and emb.meta["pooling"] == "featmap_max"
    assert not fake_ee.server.calls


def _readme_api_example() -> str:
    """The python code block of README.md's "Python API (the adapter card)" section."""
    section = README.read_text().split("## Python API (the adapter card)", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's API section has no python example"
    return blocks[0]


def test_readme_card_example_runs_offline(fake_ee, recipe_checkpoint_b64, model_cache, monkeypatch):
    """The README's example, unchanged, against the fake Earth Engine (initialised by the fixture, as a user's
    ee.Initialize would be) with the recipe checkpoint chosen through the card's env knobs."""
    import xarray as xr

    code = _readme_api_example()
    assert 'PointBuffer(lon=121.5, lat=31.2, buffer_m=2048)' in code and 'backend="gee"' in code
    monkeypatch.setenv("RS_EMBED_DYNAMICVIS_CKPT_FILE", str(recipe_checkpoint_b64))
    monkeypatch.setenv("RS_EMBED_DYNAMICVIS_IMG", "64")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    emb, grid = namespace["emb"], namespace["grid"]
    assert emb.data.shape == (768,) and emb.data.dtype == np.float32
    assert emb.meta["pooling"] == "featmap_mean" and emb.meta["feature_kind"] == "featmap"
    assert isinstance(grid.data, xr.DataArray) and grid.data.name == "embedding"
    assert grid.data.dims == ("d", "y", "x") and grid.meta["grid_kind"] == "last_stage_featmap"
    assert fake_ee.server.calls, "the example did not fetch from (the fake) Earth Engine"
