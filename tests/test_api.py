"""The card's Python API against the fake Earth Engine server and a recipe checkpoint (small model)."""
from __future__ import annotations

import numpy as np
import pytest

import pipeline
from pipeline import BBox, OutputSpec, PointBuffer, TemporalSpec


@pytest.fixture
def config(recipe_checkpoint_b64, model_cache):
    import models

    return models.ModelConfig(checkpoint=str(recipe_checkpoint_b64), img_size=64)


TEMPORAL = TemporalSpec.range("2022-06-01", "2022-09-01")


def test_pooled_embedding_of_a_point_equals_the_model_on_the_fetched_tile(fake_ee, config):
    import earth_engine
    import models
    from tiles.records import TileRequest

    spatial = PointBuffer(lon=121.5, lat=31.2, buffer_m=160)
    emb = pipeline.get_embedding("dynamicvis", spatial=spatial, temporal=TEMPORAL, output=OutputSpec.pooled(),
                                 backend="gee", ee_settings=fake_ee.settings, model_config=config)
    tile = pipeline.api.tile_for(spatial)
    assert tile.tile_px == 32
    (pixels,) = earth_engine.fetch_tiles([TileRequest(tile, TEMPORAL.window)], earth_engine.S2Settings(),
                                         fake_ee.settings)
    direct = models.DynamicVisEmbedder(config).embed(pixels.chw[None])["pooled"][0]
    np.testing.assert_allclose(emb.data, direct, rtol=1e-5, atol=1e-6)
    for key in ("arch", "path_type", "sampling_scale", "mamba2", "feature_kind", "hf_repo", "ckpt_file", "img"):
        assert key in emb.meta
    assert emb.meta["feature_kind"] == "featmap_mean" and emb.meta["tile_id"] == tile.tile_id


def test_grid_output_is_a_dataarray_of_the_last_stage_feature_map(fake_ee, config):
    import xarray as xr

    emb = pipeline.get_embedding(spatial=BBox(8.0, 47.0, 8.003, 47.002), temporal=TEMPORAL,
                                 output=OutputSpec.grid(), ee_settings=fake_ee.settings, model_config=config)
    assert isinstance(emb.data, xr.DataArray) and emb.data.dims == ("d", "y", "x")
    assert emb.data.attrs["grid_kind"] == "last_stage_featmap"
    assert emb.data.shape[1:] == (2, 2)  # img 64 / 32


def test_input_chw_path_embeds_without_fetching(fake_ee, config):
    chw = np.random.default_rng(1).integers(0, 4000, (3, 32, 32), dtype=np.uint16)
    emb = pipeline.get_embedding(temporal=TEMPORAL, input_chw=chw, output=OutputSpec.pooled("max"),
                                 model_config=config)
    assert emb.data.dtype == np.float32 and emb.meta["feature_kind"] == "featmap_max"
    assert not fake_ee.server.calls


def test_batch_returns_one_per_spec_and_names_failures(fake_ee, config):
    from tiles.grid import tile_bounds_utm

    specs = [PointBuffer(8.0, 47.0, 160), PointBuffer(13.4, 52.52, 160)]
    embs = pipeline.get_embeddings_batch(spatials=specs, temporal=TEMPORAL, ee_settings=fake_ee.settings,
                                         model_config=config)
    assert len(embs) == 2 and embs[0].data.shape == embs[1].data.shape
    empty = pipeline.api.tile_for(specs[1])
    fake_ee.server.add_empty_area(empty.crs, tile_bounds_utm(empty))
    with pytest.raises(RuntimeError, match="NoScenesError"):
        pipeline.get_embeddings_batch(spatials=specs, temporal=TEMPORAL, ee_settings=fake_ee.settings,
                                      model_config=config)
