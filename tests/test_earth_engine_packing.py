"""Requests packed by Earth Engine's size rule: requests per tile for compact and ragged regions at every tile
size, the fake server refusing what Earth Engine refuses, and tiles or chips larger than one request fetched
in pieces and stitched pixel for pixel."""
from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

import earth_engine
from earth_engine.packing import MIN_FILL, Block, bounding_box, count_requests, intersection, pack, pack_boxes, pieces
from earth_engine.settings import COMPUTE_PIXELS_MAX_BYTES, COMPUTE_PIXELS_MAX_SIDE_PX
from tests.fakes.ee_server import synthetic_pixels
from tiles.records import Chip, DeadLetter, Tile, TilePixels, TileRequest, TimeWindow

WINDOW = TimeWindow(dt.date(2023, 5, 1), dt.date(2023, 8, 1))
S2 = earth_engine.S2Settings(max_concurrency=4, requests_per_second=1000)
MAX_PX = earth_engine.max_request_pixels(S2)


def grid_boxes(tile_px, cells):
    return [(ix * tile_px, iy * tile_px, tile_px, tile_px) for ix, iy in cells]


def disc(radius_tiles, offset=(37, -11)):
    """Tiles of a disc (a compact region) off any global alignment."""
    r = radius_tiles
    return [(offset[0] + ix, offset[1] + iy) for ix in range(-r, r + 1) for iy in range(-r, r + 1)
            if ix * ix + iy * iy <= r * r]


def check_blocks(boxes, groups):
    """Every box in exactly one group; every group's bounding box within EE's limits."""
    assert sorted(i for g in groups for i in g) == list(range(len(boxes)))
    for group in groups:
        _, _, w, h = bounding_box(boxes[i] for i in group)
        assert w * h * S2.ee_bytes_per_pixel <= COMPUTE_PIXELS_MAX_BYTES
        assert w <= COMPUTE_PIXELS_MAX_SIDE_PX and h <= COMPUTE_PIXELS_MAX_SIDE_PX


def test_a_6x6_patch_of_128_px_tiles_is_one_request_at_any_alignment():
    for origin in [(0, 0), (3, 5), (-7, 13)]:
        boxes = grid_boxes(128, [(origin[0] + i, origin[1] + j) for i in range(6) for j in range(6)])
        assert len(pack_boxes(boxes, MAX_PX)) == 1
    boxes = grid_boxes(128, [(i, j) for i in range(16) for j in range(16)])
    assert len(pack_boxes(boxes, MAX_PX)) == 1  # 16 x 16 tiles of 128 px: 2048 x 2048 px, 48 MiB exactly


@pytest.mark.parametrize("tile_px,bound", [(128, 0.02), (256, 0.03), (512, 0.08)])
def test_compact_regions_need_few_requests_per_tile(tile_px, bound):
    """A disc of ~1,250 tiles; the floor is 1 / (tiles in one 48 MiB request): 1/256, 1/64, 1/16."""
    boxes = grid_boxes(tile_px, disc(20))
    groups = pack_boxes(boxes, MAX_PX)
    check_blocks(boxes, groups)
    per_tile = len(groups) / len(boxes)
    floor = 1 / ((2048 // tile_px) ** 2)
    assert floor <= per_tile <= bound, per_tile


def test_ragged_regions_are_packed_and_covered_exactly_once():
    rng = np.random.default_rng(3)
    cells = {(int(x), int(y)) for x, y in rng.integers(-20, 20, size=(600, 2))}  # ~1/3 of the ground, holes
    boxes = grid_boxes(256, sorted(cells))
    groups = pack_boxes(boxes, MAX_PX)
    check_blocks(boxes, groups)
    assert len(groups) < len(boxes) / 5
    for group in groups:  # no mostly-empty request: its boxes cover at least MIN_FILL of it
        _, _, w, h = bounding_box(boxes[i] for i in group)
        assert len(group) * 256 * 256 >= MIN_FILL * w * h
    far = grid_boxes(32, [(0, 0), (2000, 0), (4000, 3)])  # chips far apart: one request each, not a strip
    assert len(pack_boxes(far, MAX_PX)) == 3
    # a ring: holes inside a block are allowed
    ring = grid_boxes(128, [(i, j) for i in range(12) for j in range(12) if i in (0, 11) or j in (0, 11)])
    assert len(pack_boxes(ring, MAX_PX)) == 1


@pytest.mark.parametrize("tile_px", [16, 100, 535, 670, 714, 893, 1070, 1340, 2140, 3000, 4096])
def test_no_tile_size_from_16_to_4096_px_breaks_the_rule(tile_px):
    boxes = grid_boxes(tile_px, [(i, j) for i in range(5) for j in range(5)])
    requests = [TileRequest(Tile(32633, b[0] // tile_px, b[1] // tile_px, tile_px, 10.0), WINDOW) for b in boxes]
    blocks = pack(requests, S2)
    for block in blocks:
        assert block.width * block.height * S2.ee_bytes_per_pixel <= COMPUTE_PIXELS_MAX_BYTES
        assert max(block.width, block.height) <= COMPUTE_PIXELS_MAX_SIDE_PX
    covered = dict.fromkeys(boxes, 0)
    for block in blocks:
        for r in block.requests:
            _, _, w, h = intersection(block.box, r.tile.pixel_box)
            covered[r.tile.pixel_box] += w * h
    assert all(covered[b] == tile_px * tile_px for b in boxes)  # whole, exactly once
    minimum = 25 * math.ceil(tile_px * tile_px / MAX_PX) if tile_px > 2048 else math.ceil(25 * tile_px ** 2 / MAX_PX)
    assert count_requests(boxes, S2) == len(blocks) >= minimum


def test_pieces_tile_an_oversize_box_exactly():
    box = (1000, -2000, 40000, 3001)  # wider than 32,768 px and over 48 MiB
    parts = pieces(box, MAX_PX)
    assert sum(w * h for _, _, w, h in parts) == 40000 * 3001
    assert all(w * h <= MAX_PX and w <= COMPUTE_PIXELS_MAX_SIDE_PX for _, _, w, h in parts)
    assert bounding_box(parts) == box


def test_fake_server_refuses_what_earth_engine_refuses(fake_ee):
    import ee

    def call(width, height):
        block = Block(32633, 10.0, WINDOW, (0, 0, width, height), [])
        params = {"expression": earth_engine.s2_image(S2, block.crs, block.bounds, WINDOW),
                  "fileFormat": "NUMPY_NDARRAY", "bandIds": list(S2.band_ids), "grid": block.grid()}
        return ee.data.computePixels(params)

    with pytest.raises(ee.EEException, match=r"Total request size \(50356224 bytes\) must be less than or equal"):
        call(2049, 2048)  # 12 B/px with the mask bytes: just over 48 MiB
    with pytest.raises(ee.EEException, match=r"Grid dimensions \(32769x1\)"):
        call(32769, 1)
    assert call(2048, 2048).shape == (2048, 2048)  # exactly 48 MiB is allowed
    assert [c.answer for c in fake_ee.server.calls] == [400, 400, 200]


def _expected(area, window=WINDOW):
    x0, y0, w, h = area.pixel_box
    bands = synthetic_pixels(area.crs, area.transform, w, h, window.start)
    return np.stack([bands["B4"], bands["B3"], bands["B2"]])


def test_a_chip_bigger_than_one_request_is_stitched_pixel_for_pixel(fake_ee):
    big = Chip(32633, 40_001, 510_003, 2500, 2100, 10.0)  # 5.25 Mpx: over 48 MiB, off any tile grid
    small = Tile(32633, 300, 3000, 128, 10.0)
    requests = [TileRequest(big, WINDOW, "big"), TileRequest(small, WINDOW, "small")]
    out = earth_engine.fetch_tiles(requests, S2, fake_ee.settings)
    assert all(isinstance(r, TilePixels) for r in out)
    np.testing.assert_array_equal(out[0].chw, _expected(big))
    np.testing.assert_array_equal(out[1].chw, _expected(small))
    assert out[0].chw.shape == (3, 2100, 2500)
    sizes = sorted((c.width, c.height) for c in fake_ee.server.calls)
    assert len(sizes) == 3 and all(c.answer == 200 for c in fake_ee.server.calls)  # two pieces + the tile


def test_a_failed_piece_dead_letters_its_chip_only(fake_ee):
    from tests.fakes.ee_server import Fault

    big = Chip(32633, 0, 0, 2100, 2100, 10.0)  # pieces: full-width strips, the southern one fails
    other = Tile(32633, 100, 100, 64, 10.0)
    fake_ee.server.fail_where(5.0, 5.0, Fault.HTTP_400)  # the south-west piece of the big chip
    out = earth_engine.fetch_tiles([TileRequest(big, WINDOW), TileRequest(other, WINDOW)], S2, fake_ee.settings)
    assert isinstance(out[0], DeadLetter) and out[0].error_class == "HTTP400"
    assert isinstance(out[1], TilePixels)


def test_4096_px_tiles_are_fetched_without_rejection(fake_ee):
    requests = [TileRequest(Tile(32633, 10 + i, 100, 4096, 10.0), WINDOW) for i in range(2)]
    out = earth_engine.fetch_tiles(requests, S2, fake_ee.settings)
    assert all(isinstance(r, TilePixels) for r in out)
    for request, result in zip(requests, out):
        np.testing.assert_array_equal(result.chw, _expected(request.tile))
    assert len(fake_ee.server.calls) == 2 * len(pieces(requests[0].tile.pixel_box, MAX_PX)) == 8
    assert all(c.answer == 200 for c in fake_ee.server.calls)
