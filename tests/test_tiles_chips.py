"""Chips on the zone's pixel lattice (PointBuffer, BBox, --points), antimeridian footprints, is_primary at seams,
and tile/chip ids that round-trip any --scale-m."""
from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow.parquet as pq
import pyproj
import pytest
import shapely
import shapely.affinity

from tiles.chips import bbox_chip, chip_centre_utm, point_chip
from tiles.grid import is_primary, tile_footprint_wgs84, tile_from_id
from tiles.planning import expand_shard, plan_shards
from tiles.records import Chip, Tile
from tiles.regions import Region, parse_bbox


@pytest.mark.parametrize("lon,lat,buffer_m,scale_m", [
    (121.5, 31.2, 2048, 10.0), (8.123456, 47.654321, 1005, 10.0), (-70.3, -33.4, 333.3, 10.0),
    (179.99, -16.5, 500, 10.0), (3.0, 0.0001, 2560, 20.0), (12.34, 56.78, 640, 2.5)])
def test_point_chip_is_centred_within_half_a_pixel_and_2_buffer_wide(lon, lat, buffer_m, scale_m):
    chip = point_chip(lon, lat, buffer_m, scale_m)
    x, y = pyproj.Transformer.from_crs(4326, chip.epsg, always_xy=True).transform(lon, lat)
    cx, cy = chip_centre_utm(chip)
    assert abs(cx - x) <= scale_m / 2 and abs(cy - y) <= scale_m / 2
    assert chip.width == chip.height == round(2 * buffer_m / scale_m)
    assert abs(chip.width * scale_m - 2 * buffer_m) <= scale_m / 2
    assert chip.epsg == (32600 if lat >= 0 else 32700) + int((lon + 180) // 6) + 1


def test_nearby_point_chips_share_one_lattice():
    a, b = point_chip(8.5, 47.5, 1000, 10.0), point_chip(8.503, 47.501, 1000, 10.0)
    assert a.epsg == b.epsg and a.scale_m == b.scale_m  # integer origins on the same 10 m lattice
    assert (a.x0, a.y0) != (b.x0, b.y0)


def test_bbox_chip_is_the_pixel_snapped_extent_of_the_box():
    w, s, e, n = 8.0, 47.0, 8.05, 47.03
    chip = bbox_chip(w, s, e, n, 10.0)
    box = shapely.segmentize(shapely.box(w, s, e, n), 0.0005)
    projected = shapely.transform(box, lambda xy: np.column_stack(
        pyproj.Transformer.from_crs(4326, chip.epsg, always_xy=True).transform(xy[:, 0], xy[:, 1])))
    min_x, min_y, max_x, max_y = projected.bounds
    assert (chip.x0, chip.y0) == (math.floor(min_x / 10), math.floor(min_y / 10))
    assert (chip.x0 + chip.width, chip.y0 + chip.height) == (math.ceil(max_x / 10), math.ceil(max_y / 10))


@pytest.mark.parametrize("scale_m", [10.0, 2.5, 0.3, 10.123456789, 1e-3 * 7, 60.0])
def test_ids_round_trip_any_scale(scale_m):
    tile = Tile(32633, -4, 1040, 128, scale_m)
    assert tile_from_id(tile.tile_id) == tile
    chip = Chip(32733, 123, -456, 70, 50, scale_m)
    assert tile_from_id(chip.tile_id) == chip
    assert Tile(32633, 1, 2, 512, 10.0).tile_id == "32633_512px10m_1_2"  # ids of the default grid unchanged


def test_points_mode_chip_plans_one_centred_chip_per_point_with_stable_ids():
    points = ((8.5, 47.5), (8.5001, 47.5), (9.1, 46.9))
    region = Region("pts", points=points, buffer_m=1000.0)
    chips = [c for shard in plan_shards([region], 512, 10.0) for c in expand_shard(shard)]
    assert all(isinstance(c, Chip) for c in chips) and len(chips) == 3
    assert {c.tile_id for c in chips} == {point_chip(lon, lat, 1000.0, 10.0).tile_id for lon, lat in points}
    again = [c for shard in plan_shards([region], 512, 10.0) for c in expand_shard(shard)]
    assert [c.tile_id for c in again] == [c.tile_id for c in chips]
    grid = [t for shard in plan_shards([region], 512, 10.0, points_mode="grid") for t in expand_shard(shard)]
    assert all(isinstance(t, Tile) for t in grid)


def test_antimeridian_footprints_are_valid_multipolygons_in_geoparquet(tmp_path):
    """Fiji: tiles of zone 60 (and 1) that cross 180 deg."""
    region = parse_bbox("177.0,-18.5,179.999,-16.0")
    tiles = [t for shard in plan_shards([region], 512, 10.0) for t in expand_shard(shard)]
    footprints = [tile_footprint_wgs84(t) for t in tiles]
    assert all(f.is_valid for f in footprints)
    crossing = [f for f in footprints if f.geom_type == "MultiPolygon"]
    assert crossing, "expected tiles across the antimeridian"
    for f in footprints:
        min_x, _, max_x, _ = f.bounds
        if f.geom_type == "MultiPolygon":
            assert min_x == -180.0 and max_x == 180.0 and len(f.geoms) == 2
            assert all(g.bounds[0] >= 179 or g.bounds[2] <= -179 for g in f.geoms)
        geod_area = abs(pyproj.Geod(ellps="WGS84").geometry_area_perimeter(f)[0])
        assert geod_area == pytest.approx((512 * 10.0) ** 2, rel=0.01)  # ~26.2 km2, not half the globe

    from transforms.schema import TileMeta, arrow_schema, encode_row, to_bigquery_row
    from tiles.records import TileRequest, TimeWindow
    import pyarrow as pa

    tile = tiles[[f.geom_type for f in footprints].index("MultiPolygon")]
    meta = TileMeta(TileRequest(tile, TimeWindow(dt.date(2024, 6, 1), dt.date(2024, 7, 1))), 1.0, 3)
    model = {"arch": "b", "img": 64, "image_size": 64, "path_type": "forward_reverse_shuffle_gate",
             "sampling_scale": 0.1}
    from transforms.schema import RunInfo
    run = RunInfo("0", "median", 30.0, "mean", dt.datetime(2024, 7, 1, tzinfo=dt.timezone.utc))
    row = encode_row(meta, np.zeros(4, np.float32), model, run)
    schema = arrow_schema()
    pq.write_table(pa.Table.from_pylist([row], schema=schema), tmp_path / "x.parquet")
    back = pq.read_table(tmp_path / "x.parquet").to_pylist()[0]
    geometry = shapely.from_wkb(back["geometry"])
    assert geometry.geom_type == "MultiPolygon" and geometry.is_valid
    assert "MultiPolygon" in pq.read_schema(tmp_path / "x.parquet").metadata[b"geo"].decode()
    # BigQuery GEOGRAPHY (spherical edges): one loop again, every edge short (none the long way round the globe)
    loop = np.asarray(shapely.get_coordinates(shapely.from_wkt(to_bigquery_row(row)["geometry"])))
    assert to_bigquery_row(row)["geometry"].startswith("POLYGON")
    steps = np.abs(np.diff(loop[:, 0]))
    assert (np.minimum(steps, 360 - steps) < 1.0).all() and (steps > 180).any()
    unwrapped = shapely.Polygon(np.column_stack([np.where(loop[:, 0] < 0, loop[:, 0] + 360, loop[:, 0]), loop[:, 1]]))
    shifted = shapely.union_all([shapely.affinity.translate(g, 360) if g.bounds[2] <= 0 else g for g in geometry.geoms])
    assert unwrapped.is_valid and unwrapped.symmetric_difference(shifted).area < 1e-12


def _primary_counts(tiles, points):
    """Per ground point: how many planned tiles and how many primary tiles contain it."""
    footprints = [tile_footprint_wgs84(t, 16) for t in tiles]
    primary = np.array([is_primary(t) for t in tiles])
    tree = shapely.STRtree(footprints)
    pt_geoms = shapely.points(points)
    pairs = tree.query(pt_geoms, predicate="within")  # (point index, footprint index)
    all_counts = np.bincount(pairs[0], minlength=len(points))
    prim_counts = np.bincount(pairs[0][primary[pairs[1]]], minlength=len(points))
    return all_counts, prim_counts


@pytest.mark.parametrize("bbox,seam", [("5.7,46.0,6.3,46.3", "lon 6"), ("20.0,-0.2,20.3,0.2", "equator")])
def test_exactly_one_primary_tile_per_ground_point_away_from_the_seam_strip(bbox, seam):
    region = parse_bbox(bbox)
    tiles = [t for shard in plan_shards([region], 256, 10.0) for t in expand_shard(shard)]
    w, s, e, n = map(float, bbox.split(","))
    rng = np.random.default_rng(5)
    points = np.column_stack([rng.uniform(w + 0.01, e - 0.01, 4000), rng.uniform(s + 0.01, n - 0.01, 4000)])
    covered, primary = _primary_counts(tiles, points)
    assert (covered >= 1).all()  # the plan leaves no gap
    # distance to the seam in metres (~111 km per degree; cos(lat) for meridians)
    if seam == "equator":
        dist = np.abs(points[:, 1]) * 111_000
    else:
        dist = np.abs(points[:, 0] - 6.0) * 111_000 * math.cos(math.radians(46.15))
    far = dist > 256 * 10.0 * 1.5  # beyond one tile (and its diagonal) from the seam
    assert (primary[far] == 1).all()
    assert (covered[far] == 1).all()
    near = ~far
    assert near.any() and (primary[near] <= 2).all()  # within the strip: 0, 1 or 2 (the two grids disagree)
