"""The card's spatial specs against the fake Earth Engine: the computePixels grid of a PointBuffer is centred on
the point within half a pixel and 2*buffer_m wide; a BBox grid is the box's pixel-snapped extent."""
from __future__ import annotations

import math

import numpy as np
import pyproj
import pytest
import shapely

import pipeline
from pipeline import BBox, OutputSpec, PointBuffer, TemporalSpec

TEMPORAL = TemporalSpec.range("2022-06-01", "2022-09-01")


@pytest.fixture
def config(recipe_checkpoint_b64, model_cache):
    import models

    return models.ModelConfig(checkpoint=str(recipe_checkpoint_b64), img_size=64)


@pytest.mark.parametrize("lon,lat,buffer_m", [(121.5, 31.2, 160), (-58.3817, -34.6037, 245)])
def test_point_buffer_grid_is_centred_on_the_point(fake_ee, config, lon, lat, buffer_m):
    emb = pipeline.get_embedding(spatial=PointBuffer(lon, lat, buffer_m), temporal=TEMPORAL,
                                 output=OutputSpec.pooled(), ee_settings=fake_ee.settings, model_config=config)
    [call] = fake_ee.server.calls
    epsg = int(call.crs.split(":")[1])
    assert epsg == (32600 if lat >= 0 else 32700) + int((lon + 180) // 6) + 1
    x, y = pyproj.Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    xmin, ymin, xmax, ymax = call.bounds
    assert abs((xmin + xmax) / 2 - x) <= 5.0 and abs((ymin + ymax) / 2 - y) <= 5.0  # half a 10 m pixel
    assert call.width == call.height == round(2 * buffer_m / 10)
    assert abs((xmax - xmin) - 2 * buffer_m) <= 5.0
    assert emb.data.ndim == 1 and emb.data.dtype == np.float32
    assert emb.meta["effective_resolution_m"] == pytest.approx([call.width * 10 / 64] * 2)


def test_bbox_grid_is_the_pixel_snapped_extent(fake_ee, config):
    w, s, e, n = 8.0, 47.0, 8.004, 47.002
    emb = pipeline.get_embedding(spatial=BBox(w, s, e, n), temporal=TEMPORAL, output=OutputSpec.pooled(),
                                 ee_settings=fake_ee.settings, model_config=config)
    [call] = fake_ee.server.calls
    assert call.crs == "EPSG:32632"
    to_utm = pyproj.Transformer.from_crs(4326, 32632, always_xy=True)
    ring = shapely.segmentize(shapely.box(w, s, e, n), 1e-5)
    xs, ys = to_utm.transform(*np.asarray(ring.exterior.coords).T)
    expected = (math.floor(min(xs) / 10) * 10, math.floor(min(ys) / 10) * 10,
                math.ceil(max(xs) / 10) * 10, math.ceil(max(ys) / 10) * 10)
    assert call.bounds == pytest.approx(expected)
    assert call.width != call.height  # the exact rectangle, not a square tile around it
    assert emb.meta["effective_resolution_m"] == pytest.approx([call.width * 10 / 64, call.height * 10 / 64])


def test_nearby_point_chips_share_one_request(fake_ee, config):
    specs = [PointBuffer(8.5, 47.5, 160), PointBuffer(8.501, 47.5005, 160), PointBuffer(8.4995, 47.4998, 120)]
    embs = pipeline.get_embeddings_batch(spatials=specs, temporal=TEMPORAL, ee_settings=fake_ee.settings,
                                         model_config=config)
    assert len(embs) == 3 and len(fake_ee.server.calls) == 1
