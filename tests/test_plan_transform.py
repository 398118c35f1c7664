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
