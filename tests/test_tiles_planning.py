import math
import random

import numpy as np
import pyproj
import pytest
import shapely

from tiles import (InputError, Region, Tile, count_tiles, parse_bbox, plan_shards, plan_summary, tile_containing,
                   tile_footprint_utm)
from tiles.grid import project_to_utm
from tiles.planning import count_shard, expand_shard

def brute_force_tiles(geometry_lonlat, tile_px=512, scale_m=10.0):
    """{(epsg, ix, iy)} of tiles whose footprint overlaps the lon/lat geometry with positive area."""
    size = tile_px * scale_m
    found = set()
    for zone in range(1, 61):
        west = -180.0 + 6.0 * (zone - 1)
        for north in (True, False):
            band = shapely.box(west, 0.0 if north else -80.0, west + 6.0, 84.0 if north else 0.0)
            part = geometry_lonlat.intersection(band)
            if part.is_empty or part.area == 0:
                continue
            epsg = (32600 if north else 32700) + zone
            forward = pyproj.Transformer.from_crs(4326, epsg, always_xy=True)
            projected = shapely.transform(
                shapely.segmentize(part, 0.01),
                lambda xy, forward=forward: np.column_stack(forward.transform(xy[:, 0], xy[:, 1])))
            min_x, min_y, max_x, max_y = projected.bounds
            for ix in range(math.floor(min_x / size) - 1, math.floor(max_x / size) + 2):
                for iy in range(math.floor(min_y / size) - 1, math.floor(max_y / size) + 2):
                    footprint = shapely.box(ix * size, iy * size, (ix + 1) * size, (iy + 1) * size)
                    if footprint.intersection(projected).area > 1.0:  # > 1 m^2: more than touching
                        found.add((epsg, ix, iy))
    return found


def planned(regions, tile_px=512, scale_m=10.0, target_tiles=1024, points_mode="grid"):
    """[(request_id, epsg, ix, iy)] in plan order (points as grid tiles: --points-mode grid)."""
    return [(shard.request_id, t.epsg, t.ix, t.iy)
            for shard in plan_shards(regions, tile_px, scale_m, target_tiles, points_mode=points_mode)
            for t in expand_shard(shard)]


def tile_set(regions, **kwargs):
    keys = planned(regions, **kwargs)
    assert len(keys) == len(set(keys)), "a tile was planned twice"
    return {k[1:] for k in keys}


def test_small_bbox_matches_brute_force_and_shards_agree():
    region = parse_bbox("8.2,46.1,8.9,46.6")
    expected = brute_force_tiles(region.geometry)
    assert tile_set([region]) == expected
    assert tile_set([region], target_tiles=7) == expected  # many small shards: same tiles, none twice
    assert count_tiles([region]) == len(expected)


def test_bbox_across_two_zones():
    region = parse_bbox("11,45,13,45.5")
    tiles = tile_set([region])
    assert {t[0] for t in tiles} == {32632, 32633}
    assert tiles == brute_force_tiles(region.geometry)
    summary = plan_summary([region])
    assert set(summary.per_zone) == {32632, 32633} and sum(summary.per_zone.values()) == summary.tiles


def test_bbox_across_equator():
    region = parse_bbox("10.2,-0.3,10.6,0.3")
    tiles = tile_set([region])
    assert {t[0] for t in tiles} == {32632, 32732}
    assert tiles == brute_force_tiles(region.geometry)
    assert min(t[2] for t in tiles if t[0] == 32632) == 0        # north grid starts at the equator
    assert max(t[2] for t in tiles if t[0] == 32732) == 1953     # south grid's top row straddles it


def test_bbox_across_antimeridian():
    region = parse_bbox("179.6,-16.2,-179.7,-15.9")  # Fiji
    tiles = tile_set([region])
    assert {t[0] for t in tiles} == {32760, 32701}
    assert tiles == brute_force_tiles(region.geometry)


def test_polygon_drops_tiles_that_only_touch_its_bounding_box():
    triangle = shapely.Polygon([(7.0, 46.0), (7.6, 46.0), (7.0, 46.4)])
    region = Region("tri", geometry=triangle)
    tiles = tile_set([region])
    in_bbox = tile_set([Region("box", geometry=shapely.box(*triangle.bounds))])
    assert tiles == brute_force_tiles(triangle)
    assert len(tiles) < 0.7 * len(in_bbox)
    projected = project_to_utm(shapely.segmentize(triangle, 0.01), 32632)
    for epsg, ix, iy in tiles:
        assert tile_footprint_utm(Tile(epsg, ix, iy, 512, 10.0)).intersects(projected)
    ne_corner = tile_containing(7.59, 46.39)
    assert (ne_corner.epsg, ne_corner.ix, ne_corner.iy) in in_bbox - tiles


def test_polygon_with_hole_and_concave_rows():
    outer = [(9.0, 45.0), (9.5, 45.0), (9.5, 45.4), (9.0, 45.4)]
    hole = [(9.1, 45.1), (9.4, 45.1), (9.4, 45.3), (9.1, 45.3)]
    ring = shapely.Polygon(outer, [hole])
    assert tile_set([Region("ring", geometry=ring)]) == brute_force_tiles(ring)
    u_shape = shapely.Polygon([(9, 45), (9.5, 45), (9.5, 45.3), (9.4, 45.3), (9.4, 45.1), (9.1, 45.1),
                               (9.1, 45.3), (9, 45.3)])
    assert tile_set([Region("u", geometry=u_shape)]) == brute_force_tiles(u_shape)


def test_grid_aligned_box_has_no_extra_row_or_column():
    size = 5120.0
    to_lonlat = pyproj.Transformer.from_crs(32632, 4326, always_xy=True)
    # A box exactly on grid lines in UTM, expressed in lon/lat through a dense ring: 4 x 3 tiles.
    square = shapely.segmentize(shapely.box(100 * size, 1000 * size, 104 * size, 1003 * size), 50.0)
    lonlat = shapely.transform(square, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1])))
    tiles = tile_set([Region("aligned", geometry=lonlat)])
    assert tiles == {(32632, ix, iy) for ix in range(100, 104) for iy in range(1000, 1003)}


def test_same_request_dedups_overlapping_regions_different_requests_do_not():
    a, b = parse_bbox("8,46,8.3,46.2", "req"), parse_bbox("8.2,46.1,8.5,46.3", "req")
    union = tile_set([a, b])
    assert union == tile_set([a]) | tile_set([b])
    both = planned([a, parse_bbox("8.2,46.1,8.5,46.3", "other")])
    assert len(both) == len(tile_set([a])) + len(tile_set([b]))


def test_points_buffers_and_dedup():
    size = 5120.0
    centre = Tile(32632, 90, 1000, 512, 10.0)
    to_lonlat = pyproj.Transformer.from_crs(32632, 4326, always_xy=True)
    lon, lat = to_lonlat.transform(90.5 * size, 1000.5 * size)
    near_lon, near_lat = to_lonlat.transform(90.6 * size, 1000.4 * size)
    # buffer 0: the tile containing the point; two points in one tile: once.
    zero = Region("p", points=((lon, lat), (near_lon, near_lat)), buffer_m=0.0)
    assert tile_set([zero]) == {(32632, 90, 1000)}
    # buffer of one tile side around a tile centre: the 3 x 3 block; overlapping squares once.
    block = Region("p", points=((lon, lat), (near_lon, near_lat)), buffer_m=size)
    assert tile_set([block]) == {(32632, ix, iy) for ix in (89, 90, 91) for iy in (999, 1000, 1001)}
    # small buffer inside one tile
    assert tile_set([Region("p", points=((lon, lat),), buffer_m=100.0)]) == {(32632, 90, 1000)}
    # the same point in two requests: once per request
    assert len(planned([Region("a", points=((lon, lat),)), Region("b", points=((lon, lat),))])) == 2
    assert centre.tile_id in {Tile(32632, ix, iy, 512, 10.0).tile_id for _, ix, iy in tile_set([zero])}


def test_points_and_polygon_of_one_request_share_tiles():
    region = parse_bbox("8,46,8.3,46.2", "mixed")
    lon, lat = 8.1, 46.1
    mixed = tile_set([region, Region("mixed", points=((lon, lat), (8.4, 46.1)), buffer_m=2000)])
    assert mixed == tile_set([region]) | tile_set([Region("x", points=((lon, lat), (8.4, 46.1)), buffer_m=2000)])


def test_many_points_across_zones_small_shards():
    rng = random.Random(7)
    points = tuple((rng.uniform(-5, 20), rng.uniform(-10, 60)) for _ in range(300))
    region = Region("pts", points=points, buffer_m=3000)
    expected = set()
    for lon, lat in points:
        centre = tile_containing(lon, lat)
        to_utm = pyproj.Transformer.from_crs(4326, centre.epsg, always_xy=True)
        x, y = to_utm.transform(lon, lat)
        for ix in range(math.floor((x - 3000) / 5120), math.ceil((x + 3000) / 5120)):
            for iy in range(math.floor((y - 3000) / 5120), math.ceil((y + 3000) / 5120)):
                expected.add((centre.epsg, ix, iy))
    assert tile_set([region], target_tiles=10) == expected


def test_deterministic_and_order_independent():
    regions = [parse_bbox("8,46,8.3,46.2", "a"), parse_bbox("11.8,45,12.2,45.3", "b"),
               Region("a", points=((8.5, 46.5), (8.51, 46.5)), buffer_m=3000)]
    first = planned(regions)
    assert planned(list(reversed(regions))) == first
    assert planned(regions) == first


def test_shards_are_bounded():
    region = parse_bbox("0,40,12,50")
    counts = [count_shard(s) for s in plan_shards([region], target_tiles=500)]
    assert len(counts) > 10 and max(counts) <= 1000
    assert sum(counts) == count_tiles([region])


def test_bad_grid_and_empty_input():
    with pytest.raises(InputError, match="tile_px must be a positive integer"):
        count_tiles([parse_bbox("1,1,2,2")], tile_px=0)
    with pytest.raises(InputError, match="scale_m must be a positive number"):
        count_tiles([parse_bbox("1,1,2,2")], scale_m=-10)
    with pytest.raises(InputError, match="no regions to plan"):
        count_tiles([])


def _ellipsoidal_area_km2(geometry):
    dense = shapely.segmentize(geometry, 0.05)  # Geod joins vertices by geodesics; keep edges on parallels
    return abs(pyproj.Geod(ellps="WGS84").geometry_area_perimeter(dense)[0]) / 1e6


def test_continent_scale_count_matches_area():
    """Europe-sized box: ~700k tiles from ~1000 shards, counted without a tile list."""
    region = parse_bbox("-25,35,45,71")
    summary = plan_summary([region])
    estimate = _ellipsoidal_area_km2(region.geometry) / 5.12 ** 2
    assert 500_000 < summary.tiles < 1_000_000
    assert summary.tiles == pytest.approx(estimate, rel=0.04)
    assert summary.tiles > estimate  # zone edges add partial tiles, never remove area
    assert sorted(summary.per_zone) == list(range(32626, 32639))  # zones 26 (-30..-24) to 38 (42..48)
