import datetime as dt

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tiles import InputError, Region, TimeWindow, parse_bbox, plan_requests, split_windows
from transforms.plan import PlanTiles


def _key(request):
    return request.request_id, request.key


def test_plan_tiles_on_direct_runner_equals_pure_python():
    regions = [parse_bbox("179.8,-16.2,-179.9,-16.0", "fiji"),  # antimeridian: zones 60 and 1
               parse_bbox("10.4,-0.1,10.6,0.1", "equator"),
               Region("equator", points=((10.5, 0.0), (10.55, 0.02)), buffer_m=6000)]
    windows = split_windows(TimeWindow(dt.date(2020, 1, 1), dt.date(2020, 7, 1)), "quarterly")
    expected = [_key(r) for r in plan_requests(regions, windows)]
    assert len(expected) == len(set(expected)) > 100
    with BeamTestPipeline() as pipeline:
        # small shards so Reshuffle really spreads several of them
        keys = pipeline | PlanTiles(regions, windows, target_tiles=16) | beam.Map(_key)
        assert_that(keys, equal_to(expected))


def test_plan_tiles_fails_early_on_the_launcher():
    with pytest.raises(InputError, match="no time windows"):
        PlanTiles([parse_bbox("1,1,2,2")], [])
    with pytest.raises(InputError, match="no regions to plan"):
        PlanTiles([], [TimeWindow(dt.date(2020, 1, 1), dt.date(2020, 2, 1))])


def test_plan_tiles_packs_each_shard_into_requests_within_earth_engines_rule():
    """Every planned request carries its request block; a block's tiles fit one 48 MiB request, and shard
    bands are whole request heights (16 rows of 128 px tiles), so a compact region packs tightly."""
    import earth_engine
    from earth_engine.packing import bounding_box
    from earth_engine.settings import COMPUTE_PIXELS_MAX_BYTES
    from transforms.plan import block_rows, expand_and_pack

    s2 = earth_engine.S2Settings()
    window = [TimeWindow(dt.date(2021, 6, 1), dt.date(2021, 7, 1))]
    plan = PlanTiles([parse_bbox("8.0,47.0,8.6,47.3")], window, tile_px=128, target_tiles=300, s2=s2)
    assert block_rows(128, s2) == 16 and len(plan.shards) > 1
    assert all((s.row_start - plan.shards[0].row_start) % 16 == 0 for s in plan.shards)
    blocks = {}
    for shard in plan.shards:
        for request in expand_and_pack(shard, window, s2):
            blocks.setdefault(request.block, []).append(request.tile.pixel_box)
    for boxes in blocks.values():
        _, _, w, h = bounding_box(boxes)
        assert w * h * s2.ee_bytes_per_pixel <= COMPUTE_PIXELS_MAX_BYTES
    tiles = sum(len(b) for b in blocks.values())
    assert tiles == plan.planned_requests and len(blocks) / tiles < 0.01  # ~1/256 is the floor at 128 px
