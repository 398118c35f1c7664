import math

import pyproj
import pytest
import shapely

from tiles import InputError, Tile
from tiles.grid import (epsg_zone, project_to_utm, tile_bounds_utm, tile_center_lonlat, tile_containing,
                        tile_footprint_wgs84, tile_from_id, utm_epsg, utm_epsg_for_lonlat, utm_zone)


@pytest.mark.parametrize("lon, zone", [(-180, 1), (-174.0001, 1), (-174, 2), (0, 31), (5.99, 31), (6, 32),
                                       (179.99, 60), (180, 60)])
def test_utm_zone(lon, zone):
    assert utm_zone(lon) == zone


def test_epsg_codes():
    assert utm_epsg(33, True) == 32633 and utm_epsg(33, False) == 32733
    assert epsg_zone(32733) == (33, False)
    assert utm_epsg_for_lonlat(15, 0.0) == 32633 and utm_epsg_for_lonlat(15, -0.1) == 32733
    with pytest.raises(InputError, match="not a WGS 84 / UTM zone"):
        epsg_zone(4326)


def test_tile_at_central_meridian_equator():
    # Zone 33's central meridian (15E) is easting 500000; the equator is northing 0 (N) / 10,000,000 (S).
    assert tile_containing(15.0, 0.0001) == Tile(32633, 500000 // 5120, 0, 512, 10.0)
    south = tile_containing(15.0, -0.0001)
    assert (south.epsg, south.ix, south.iy) == (32733, 97, math.floor((10_000_000 - 11.06) / 5120))


def test_ids_round_trip_and_are_stable():
    tile = Tile(32733, -3, 1953, 512, 10.0)
    assert tile.tile_id == "32733_512px10m_-3_1953"
    assert tile_from_id(tile.tile_id) == tile
    assert tile_from_id("32601_256px20m_0_42") == Tile(32601, 0, 42, 256, 20.0)
    with pytest.raises(InputError, match="not a tile id"):
        tile_from_id("32633_12_13")


def test_transform_matches_bounds():
    tile = Tile(32632, 80, 1000, 512, 10.0)
    x_scale, _, x0, _, y_scale, y0 = tile.transform
    min_x, min_y, max_x, max_y = tile_bounds_utm(tile)
    assert (x0, y0) == (min_x, max_y)
    assert (x0 + 512 * x_scale, y0 + 512 * y_scale) == (max_x, min_y)


def test_footprint_and_centre_round_trip_with_pyproj():
    tile = Tile(32632, 80, 1000, 512, 10.0)
    footprint = tile_footprint_wgs84(tile)
    back = project_to_utm(footprint, 32632)
    assert shapely.hausdorff_distance(back, shapely.box(*tile_bounds_utm(tile))) < 1e-3
    lon, lat = tile_center_lonlat(tile)
    x, y = pyproj.Transformer.from_crs(4326, 32632, always_xy=True).transform(lon, lat)
    assert (x, y) == pytest.approx((80.5 * 5120, 1000.5 * 5120), abs=1e-4)
    assert tile_containing(lon, lat) == tile
    assert footprint.contains(shapely.Point(lon, lat))
