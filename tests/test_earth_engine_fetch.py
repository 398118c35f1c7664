"""Fetching through the real ee client and the fake server: cutting, retries, fallback, dead letters."""
from __future__ import annotations

import datetime as dt
import random

import numpy as np

import earth_engine
from earth_engine import metrics as m
from tests.fakes.ee_server import Fault, FaultRates, synthetic_pixels
from tiles.records import DeadLetter, Tile, TilePixels, TileRequest, TimeWindow

WINDOW = TimeWindow(dt.date(2023, 5, 1), dt.date(2023, 8, 1))
PX = 16
SIZE = PX * 10.0


def requests_grid(ix_range, iy_range, epsg=32633, window=WINDOW):
    return [TileRequest(Tile(epsg, ix, iy, PX, 10.0), window) for ix in ix_range for iy in iy_range]


def expected_chw(request: TileRequest) -> np.ndarray:
    t = request.tile
    bands = synthetic_pixels(t.crs, t.transform, PX, PX, request.window.start)
    return np.stack([bands["B4"], bands["B3"], bands["B2"]])


def s2(**kw):
    kw.setdefault("max_concurrency", 4)
    kw.setdefault("requests_per_second", 1000)
    return earth_engine.S2Settings(**kw)


def fetch(fake_ee, requests, **kw):
    metrics = earth_engine.FetchMetrics()
    out = earth_engine.fetch_tiles(requests, s2(**kw), fake_ee.settings, metrics)
    assert len(out) == len(requests)
    for request, result in zip(requests, out):  # input order, one result each
        assert (result.request.key if isinstance(result, TilePixels) else result.key) == request.key
    return out, metrics.snapshot()


def test_packed_requests_are_cut_into_the_right_tiles(fake_ee):
    requests = requests_grid(range(8, 16), range(4, 8))  # 8 x 4 tiles -> one request of their extent
    out, counts = fetch(fake_ee, requests)
    [call] = fake_ee.server.calls
    assert counts[m.REQUESTS] == 1 and (call.width, call.height) == (8 * PX, 4 * PX)
    assert call.bounds == (8 * SIZE, 4 * SIZE, 16 * SIZE, 8 * SIZE)

    fake_ee.server.reset()  # a pixel target of 4 x 4 tiles: two requests, of any alignment
    out, counts = fetch(fake_ee, requests, request_px=16 * PX * PX)
    calls = fake_ee.server.calls
    assert len(calls) == 2 == counts[m.REQUESTS]
    assert sorted((c.width, c.height) for c in calls) == [(4 * PX, 4 * PX)] * 2
    assert sorted(c.bounds for c in calls) == [(8 * SIZE, 4 * SIZE, 12 * SIZE, 8 * SIZE),
                                               (12 * SIZE, 4 * SIZE, 16 * SIZE, 8 * SIZE)]
    for request, result in zip(requests, out):
        assert isinstance(result, TilePixels)
        assert result.chw.dtype == np.uint16 and result.chw.shape == (3, PX, PX)
        np.testing.assert_array_equal(result.chw, expected_chw(request))
        # independent of the server's helper: the top-left pixel centre's easting/northing
        t = request.tile
        assert result.chw[0, 0, 0] == 1 + int(t.ix * SIZE + 5) // 10 % 9999
        assert result.chw[1, 0, 0] == 1 + int((t.iy + 1) * SIZE - 5) // 10 % 9999
        assert result.valid_fraction == 1.0 and result.n_scenes == 5
    assert counts[m.BYTES] == 2 * (4 * PX) ** 2 * 8  # four uint16 bands


def test_pixel_target_of_one_tile_sends_one_request_per_tile(fake_ee):
    requests = requests_grid(range(2), range(2))
    out, _ = fetch(fake_ee, requests, request_px=PX * PX)
    assert len(fake_ee.server.calls) == 4
    assert all(c.width == c.height == PX for c in fake_ee.server.calls)
    for request, result in zip(requests, out):
        np.testing.assert_array_equal(result.chw, expected_chw(request))


def test_blocks_split_by_zone_window_and_tile_size(fake_ee):
    other_window = TimeWindow(dt.date(2023, 8, 1), dt.date(2023, 11, 1))
    requests = (requests_grid(range(2), range(1)) + requests_grid(range(2), range(1), epsg=32634)
                + requests_grid(range(2), range(1), window=other_window))
    out, _ = fetch(fake_ee, requests)
    assert len(fake_ee.server.calls) == 3
    for request, result in zip(requests, out):
        np.testing.assert_array_equal(result.chw, expected_chw(request))


def test_same_tile_for_two_user_requests_is_fetched_once(fake_ee):
    tile = Tile(32633, 5, 5, PX, 10.0)
    requests = [TileRequest(tile, WINDOW, "alice"), TileRequest(tile, WINDOW, "bob")]
    out, _ = fetch(fake_ee, requests)
    assert len(fake_ee.server.calls) == 1
    assert [r.request.request_id for r in out] == ["alice", "bob"]


def test_429_and_500_are_retried_with_bounded_jittered_backoff(fake_ee):
    fake_ee.server.fail_calls([0, 1], Fault.HTTP_429)
    fake_ee.server.fail_calls([2], Fault.HTTP_500)
    [result], counts = fetch(fake_ee, requests_grid(range(1), range(1)), backoff_base_s=1.0)
    assert isinstance(result, TilePixels)
    assert len(fake_ee.server.calls) == 4
    assert counts[m.RETRIES] == 3 and counts[m.RATE_LIMITED] == 2 and counts[m.SERVER_ERRORS] == 1
    assert len(fake_ee.sleeps) == 3
    for attempt, slept in enumerate(fake_ee.sleeps, start=1):
        ceiling = 2 ** (attempt - 1)
        assert ceiling / 2 <= slept <= ceiling


def test_backoff_is_capped():
    settings = s2(backoff_base_s=1.0, backoff_max_s=4.0)
    rng = random.Random(0)
    assert all(2.0 <= earth_engine.fetch.backoff_seconds(k, settings, rng) <= 4.0 for k in range(3, 30))


def test_persistent_500_is_dead_lettered_after_max_attempts(fake_ee):
    fake_ee.server.fail_calls(range(100), Fault.HTTP_500)
    [dead], counts = fetch(fake_ee, requests_grid(range(1), range(1)), max_attempts=3)
    assert isinstance(dead, DeadLetter)
    assert (dead.stage, dead.error_class, dead.attempts) == ("fetch", "HTTP500", 3)
    assert "internal error" in dead.message.lower()
    assert len(fake_ee.server.calls) == 3 and len(fake_ee.sleeps) == 2


def test_400_is_not_retried(fake_ee):
    fake_ee.server.fail_calls([0], Fault.HTTP_400)
    [dead], _ = fetch(fake_ee, requests_grid(range(1), range(1)))
    assert isinstance(dead, DeadLetter) and dead.error_class == "HTTP400" and dead.attempts == 1
    assert len(fake_ee.server.calls) == 1 and fake_ee.sleeps == []


def test_failed_super_tile_falls_back_to_single_tiles(fake_ee):
    requests = requests_grid(range(4), range(2))  # one 4 x 2 block
    bad = requests[5].tile  # its single-tile request keeps failing with 400
    centre = (bad.ix * SIZE + 1, bad.iy * SIZE + 1)
    fake_ee.server.fail_where(*centre, Fault.HTTP_400)
    out, counts = fetch(fake_ee, requests)

    assert counts[m.SUPER_TILE_FALLBACKS] == 1
    assert len(fake_ee.server.calls) == 1 + 8
    for request, result in zip(requests, out):
        if request.tile == bad:
            assert isinstance(result, DeadLetter) and result.error_class == "HTTP400"
            assert result.attempts == 2 and "request of several tiles failed first" in result.message
        else:
            assert isinstance(result, TilePixels)
            np.testing.assert_array_equal(result.chw, expected_chw(request))


def test_no_scenes_tile_is_dead_lettered_without_retry(fake_ee):
    requests = requests_grid(range(2), range(1))
    empty = requests[1].tile
    fake_ee.server.add_empty_area(empty.crs, (empty.ix * SIZE, empty.iy * SIZE,
                                              (empty.ix + 1) * SIZE, (empty.iy + 1) * SIZE),
                                  WINDOW.start)
    out, _ = fetch(fake_ee, requests)
    assert len(fake_ee.server.calls) == 1
    assert isinstance(out[0], TilePixels)
    assert isinstance(out[1], DeadLetter) and out[1].error_class == "NoScenesError"
    assert "no unmasked scene" in out[1].message and "CLOUDY_PIXEL_PERCENTAGE <= 30" in out[1].message


def test_too_few_valid_pixels_is_an_option(fake_ee):
    [request] = requests_grid(range(1), range(1))
    t = request.tile
    half = (t.ix * SIZE, t.iy * SIZE, (t.ix + 1) * SIZE, t.iy * SIZE + SIZE / 2)
    fake_ee.server.add_empty_area(t.crs, half)
    [kept], _ = fetch(fake_ee, [request])
    assert isinstance(kept, TilePixels) and kept.valid_fraction == 0.5
    assert (kept.chw[:, PX // 2:, :] == 0).all() and (kept.chw[:, :PX // 2, :] > 0).all()
    [dead], _ = fetch(fake_ee, [request], min_valid_fraction=0.6)
    assert isinstance(dead, DeadLetter) and dead.error_class == "TooFewValidPixelsError"


def test_stall_times_out_and_is_retried(fake_ee):
    fake_ee.server.fail_calls([0], Fault.STALL)
    [result], counts = fetch(fake_ee, requests_grid(range(1), range(1)))
    assert isinstance(result, TilePixels)
    assert counts[m.TIMEOUTS] == 1 and counts[m.RETRIES] == 1


def test_malformed_reply_is_retried(fake_ee):
    fake_ee.server.fail_calls([0], Fault.MALFORMED)
    [result], counts = fetch(fake_ee, requests_grid(range(1), range(1)))
    assert isinstance(result, TilePixels) and counts[m.RETRIES] == 1


def test_concurrency_never_exceeds_the_cap(fake_ee):
    fake_ee.server.reset(latency=earth_engine_latency(0.05))
    requests = requests_grid(range(12), range(1))
    out, _ = fetch(fake_ee, requests, request_px=PX * PX, max_concurrency=3)
    assert all(isinstance(r, TilePixels) for r in out)
    assert fake_ee.server.max_in_flight == 3  # reached, never exceeded


def test_random_faults_lose_no_tile(fake_ee):
    fake_ee.server.reset(faults=FaultRates(rate_429=0.3, rate_500=0.1, seed=7))
    requests = requests_grid(range(8), range(8))
    out, _ = fetch(fake_ee, requests, max_attempts=3)
    assert len(out) == 64
    assert {type(r) for r in out} <= {TilePixels, DeadLetter}
    for request, result in zip(requests, out):
        if isinstance(result, TilePixels):
            np.testing.assert_array_equal(result.chw, expected_chw(request))


def earth_engine_latency(seconds):
    from tests.fakes.ee_server import LatencyModel

    return LatencyModel(base_s=seconds)


def test_concurrency_cap_holds_across_threads_of_one_process(fake_ee):
    """Beam runs several DoFn threads per worker process; the cap is per process."""
    import threading

    fake_ee.server.reset(latency=earth_engine_latency(0.05))
    batches = [requests_grid(range(k * 4, k * 4 + 4), range(1)) for k in range(3)]
    outputs = []
    threads = [threading.Thread(target=lambda b=b: outputs.append(fetch(fake_ee, b, request_px=PX * PX,
                                                                          max_concurrency=2)[0]))
               for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, TilePixels) for out in outputs for r in out) == 12
    assert fake_ee.server.max_in_flight == 2
