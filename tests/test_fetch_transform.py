"""FetchTiles on the DirectRunner against the fake server: main output, dead letters, metrics."""
from __future__ import annotations

import datetime as dt

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

import earth_engine
from tests.fakes.ee_server import Fault, synthetic_pixels
from tiles.records import Tile, TileRequest, TimeWindow
from transforms.fetch import DEAD_LETTER, FetchTiles

WINDOW = TimeWindow(dt.date(2021, 4, 1), dt.date(2021, 7, 1))
PX = 16


def _check_pixels(results):
    for result in results:
        t = result.request.tile
        bands = synthetic_pixels(t.crs, t.transform, PX, PX, WINDOW.start)
        np.testing.assert_array_equal(result.chw, np.stack([bands["B4"], bands["B3"], bands["B2"]]))


def test_fetch_tiles_ptransform_outputs_pixels_and_dead_letters(fake_ee):
    requests = [TileRequest(Tile(32618, ix, iy, PX, 10.0), WINDOW) for ix in range(4) for iy in range(4)]
    bad = requests[6].tile
    fake_ee.server.fail_where(bad.ix * PX * 10 + 1, bad.iy * PX * 10 + 1, Fault.HTTP_400)
    s2 = earth_engine.S2Settings(request_px=4 * PX * PX, max_concurrency=2, requests_per_second=1000)

    with BeamTestPipeline() as p:
        out = p | beam.Create(requests) | FetchTiles(s2, fake_ee.settings)
        pixels_keys = out.pixels | "PixelKeys" >> beam.Map(lambda r: r.request.key)
        dead = out[DEAD_LETTER] | "DeadKeys" >> beam.Map(lambda d: (d.key, d.stage, d.error_class))
        assert_that(pixels_keys, equal_to([r.key for r in requests if r.tile != bad]), label="pixels")
        assert_that(dead, equal_to([(requests[6].key, "fetch", "HTTP400")]), label="dead")
        _ = out.pixels | "CheckPixels" >> beam.combiners.ToList() | beam.Map(_check_pixels)
    result = p.result
    counters = {c.key.metric.name: c.committed for c in
                result.metrics().query(beam.metrics.MetricsFilter().with_namespace("earth_engine"))["counters"]}
    # 4 blocks of 2 x 2, one falls back to 4 single tiles
    assert counters["requests"] == 4 + 4 == len(fake_ee.server.calls)
    assert counters["super_tile_fallbacks"] == 1
    assert counters["tiles_ok"] == 15 and counters["tiles_dead_lettered"] == 1
    latency = result.metrics().query(beam.metrics.MetricsFilter().with_name("request_latency_ms"))
    assert latency["distributions"][0].committed.count == 8
