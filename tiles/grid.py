"""Deterministic UTM tile grid: zones, EPSG codes, tile footprints and centres.

Each UTM zone/hemisphere has one grid per (tile_px, scale_m), anchored at easting 0 / northing 0 of
its EPSG:326zz (north) or EPSG:327zz (south) CRS (see ``records.Tile``). Standard 6-degree zones are
used everywhere: the Norway (32V) and Svalbard (31X-37X) exceptions are deliberately ignored, so the
zone of a longitude is a pure function of the longitude.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Tuple, Union

import numpy as np
import pyproj
import shapely
import shapely.affinity
from shapely.geometry import Polygon

from tiles.errors import InputError
from tiles.records import Chip, Tile

Area = Union[Tile, Chip]  # what a row covers: a grid tile or a chip on the zone's pixel lattice

# Latitudes covered by UTM (and by the Sentinel-2 MGRS tiling); outside this is polar stereographic.
UTM_MIN_LAT = -80.0
UTM_MAX_LAT = 84.0

_TILE_ID = re.compile(r"^(\d{5})_(\d+)px([0-9.eE+-]+)m_(-?\d+)_(-?\d+)$")
_CHIP_ID = re.compile(r"^(\d{5})_(\d+)x(\d+)px([0-9.eE+-]+)m_(-?\d+)_(-?\d+)$")


def utm_zone(lon: float) -> int:
    """Standard 6-degree UTM zone (1..60) of a longitude in [-180, 180]; 180 belongs to zone 60."""
    if not -180.0 <= lon <= 180.0:
        raise InputError(f"longitude {lon} is outside [-180, 180]")
    return min(int(math.floor((lon + 180.0) / 6.0)) + 1, 60)


def zone_lon_bounds(zone: int) -> Tuple[float, float]:
    """West and east longitude of a zone."""
    west = -180.0 + 6.0 * (zone - 1)
    return west, west + 6.0


def utm_epsg(zone: int, north: bool) -> int:
    """EPSG code of WGS 84 / UTM zone ``zone`` N (326zz) or S (327zz)."""
    if not 1 <= zone <= 60:
        raise InputError(f"UTM zone {zone} is outside 1..60")
    return (32600 if north else 32700) + zone


def epsg_zone(epsg: int) -> Tuple[int, bool]:
    """(zone, north) of a WGS 84 / UTM EPSG code."""
    zone, north = epsg % 100, epsg // 100 == 326
    if epsg // 100 not in (326, 327) or not 1 <= zone <= 60:
        raise InputError(f"EPSG:{epsg} is not a WGS 84 / UTM zone (expected 32601..32660 or 32701..32760)")
    return zone, north


def utm_epsg_for_lonlat(lon: float, lat: float) -> int:
    """EPSG of the zone/hemisphere containing a point; the equator belongs to the north."""
    return utm_epsg(utm_zone(lon), lat >= 0.0)


@functools.lru_cache(maxsize=256)
def to_utm(epsg: int) -> pyproj.Transformer:
    """Cached lon/lat (WGS84) -> UTM transformer (x = lon first)."""
    epsg_zone(epsg)
    return pyproj.Transformer.from_crs(4326, epsg, always_xy=True)


@functools.lru_cache(maxsize=256)
def to_wgs84(epsg: int) -> pyproj.Transformer:
    """Cached UTM -> lon/lat (WGS84) transformer (x = lon first)."""
    epsg_zone(epsg)
    return pyproj.Transformer.from_crs(epsg, 4326, always_xy=True)


def _apply(transformer: pyproj.Transformer, xy: np.ndarray) -> np.ndarray:
    x, y = transformer.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def project_to_utm(geometry: shapely.Geometry, epsg: int) -> shapely.Geometry:
    """Project a lon/lat geometry to a UTM CRS (densify first if straight lon/lat edges matter)."""
    return shapely.transform(geometry, functools.partial(_apply, to_utm(epsg)))


def project_to_wgs84(geometry: shapely.Geometry, epsg: int) -> shapely.Geometry:
    """Project a UTM geometry to lon/lat."""
    return shapely.transform(geometry, functools.partial(_apply, to_wgs84(epsg)))


def tile_bounds_utm(tile: Area) -> Tuple[float, float, float, float]:
    """(min_x, min_y, max_x, max_y) of the tile or chip in its own UTM CRS, metres."""
    if isinstance(tile, Tile):
        size = tile.size_m
        return tile.ix * size, tile.iy * size, (tile.ix + 1) * size, (tile.iy + 1) * size
    s = tile.scale_m
    return tile.x0 * s, tile.y0 * s, (tile.x0 + tile.width) * s, (tile.y0 + tile.height) * s


def tile_footprint_utm(tile: Area) -> Polygon:
    return shapely.box(*tile_bounds_utm(tile))


def split_at_antimeridian(footprint: shapely.Geometry) -> shapely.Geometry:
    """A lon/lat polygon whose vertices jump across +-180 (lon span > 180 deg) as a valid MultiPolygon
    split at the antimeridian; any other polygon unchanged. Edges are short (densified), so a span
    over 180 deg can only come from crossing the antimeridian."""
    min_x, _, max_x, _ = footprint.bounds
    if max_x - min_x <= 180.0:
        return footprint
    unwrapped = shapely.transform(footprint, lambda xy: np.column_stack(
        [np.where(xy[:, 0] < 0, xy[:, 0] + 360.0, xy[:, 0]), xy[:, 1]]))
    west = shapely.intersection(unwrapped, shapely.box(0.0, -90.0, 180.0, 90.0))
    east = shapely.affinity.translate(shapely.intersection(unwrapped, shapely.box(180.0, -90.0, 360.0, 90.0)),
                                      -360.0)
    parts = [p for g in (west, east) for p in shapely.get_parts(g) if p.geom_type == "Polygon" and p.area > 0]
    return shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]


def geodesic_wkt(footprint: shapely.Geometry) -> str:
    """WKT for a spherical GEOGRAPHY (BigQuery): a footprint split at the antimeridian becomes one loop again,
    its edges across +-180 deg being the short geodesics, so no two parts share an edge on the sphere."""
    min_x, _, max_x, _ = footprint.bounds
    if footprint.geom_type != "MultiPolygon" or not (min_x <= -180.0 and max_x >= 180.0):
        return footprint.wkt
    shifted = [shapely.affinity.translate(p, 360.0) if p.bounds[2] <= 0 else p for p in footprint.geoms]
    merged = shapely.union_all(shifted)
    if merged.geom_type != "Polygon":
        return footprint.wkt
    ring = np.asarray(shapely.get_coordinates(merged.exterior))
    ring[:, 0] = np.where(ring[:, 0] > 180.0, ring[:, 0] - 360.0, ring[:, 0])
    return "POLYGON ((" + ", ".join(f"{float(x)!r} {float(y)!r}" for x, y in ring) + "))"


def tile_footprint_wgs84(tile: Area, points_per_side: int = 8) -> shapely.Geometry:
    """Footprint as a lon/lat polygon; each side is densified because UTM lines are curved in lon/lat.
    A footprint crossing the antimeridian comes back as a MultiPolygon split at +-180 deg."""
    footprint = shapely.segmentize(tile_footprint_utm(tile), tile.size_m / points_per_side)
    return split_at_antimeridian(project_to_wgs84(footprint, tile.epsg))


def tile_center_lonlat(tile: Area) -> Tuple[float, float]:
    min_x, min_y, max_x, max_y = tile_bounds_utm(tile)
    lon, lat = to_wgs84(tile.epsg).transform((min_x + max_x) / 2.0, (min_y + max_y) / 2.0)
    return float(lon), float(lat)


def is_primary(tile: Area) -> bool:
    """Whether the tile's centre lies in its own zone's 6-degree band and hemisphere.

    Near zone seams and the equator the tiles of both grids that reach the seam are planned, so some
    ground is covered twice there; keeping ``is_primary`` rows drops most such duplicates. The two grids
    are not aligned, so along a seam a strip narrower than one tile is left with no primary tile or with
    two (measured in docs/DEPLOY.md); everywhere else each ground point has exactly one primary tile.
    """
    lon, lat = tile_center_lonlat(tile)
    zone, north = epsg_zone(tile.epsg)
    return utm_zone(max(-180.0, min(180.0, lon))) == zone and (lat >= 0.0) == north


def tile_containing(lon: float, lat: float, tile_px: int = 512, scale_m: float = 10.0) -> Tile:
    """The tile of the point's own zone/hemisphere grid that contains the point."""
    epsg = utm_epsg_for_lonlat(lon, lat)
    x, y = to_utm(epsg).transform(lon, lat)
    size = tile_px * scale_m
    return Tile(epsg, int(math.floor(x / size)), int(math.floor(y / size)), tile_px, scale_m)


def tile_from_id(tile_id: str) -> Area:
    """Inverse of ``Tile.tile_id`` and ``Chip.tile_id``."""
    chip = _CHIP_ID.match(tile_id)
    if chip:
        epsg, width, height, scale, x0, y0 = chip.groups()
        epsg_zone(int(epsg))
        area: Area = Chip(int(epsg), int(x0), int(y0), int(width), int(height), float(scale))
    else:
        match = _TILE_ID.match(tile_id)
        if not match:
            raise InputError(f"{tile_id!r} is not a tile id (expected e.g. '32633_512px10m_81_1040' or a chip "
                             f"id like '32633_410x410px10m_33000_520000')")
        epsg, tile_px, scale, ix, iy = match.groups()
        epsg_zone(int(epsg))
        area = Tile(int(epsg), int(ix), int(iy), int(tile_px), float(scale))
    if area.tile_id != tile_id:
        raise InputError(f"{tile_id!r} is not in canonical form (expected {area.tile_id!r})")
    return area


def validate_grid(tile_px: int, scale_m: float) -> None:
    """Fail early on grid parameters that cannot make a sane tile."""
    if not isinstance(tile_px, (int, np.integer)) or tile_px <= 0:
        raise InputError(f"tile_px must be a positive integer of pixels, got {tile_px!r}")
    if not (isinstance(scale_m, (int, float)) and math.isfinite(scale_m) and scale_m > 0):
        raise InputError(f"scale_m must be a positive number of metres per pixel, got {scale_m!r}")
    if tile_px * scale_m < 1.0:
        raise InputError(f"tile_px * scale_m = {tile_px * scale_m} m; tiles must be at least 1 m wide")
