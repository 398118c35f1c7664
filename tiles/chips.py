"""Chips: pixel-lattice rectangles for a point's buffer square and for a lon/lat box (the card's
``PointBuffer`` and ``BBox``), in the UTM zone of the point or of the box centre.

Distances are true ground metres on UTM (the card's rs-embed uses Web-Mercator metres). Origins snap to
the zone's ``scale_m`` lattice, so chips near each other sit on one pixel grid and share Earth Engine
requests, and a chip's id is a pure function of its input.
"""
from __future__ import annotations

import math

import numpy as np
import shapely

from tiles.errors import InputError
from tiles.grid import UTM_MAX_LAT, UTM_MIN_LAT, project_to_utm, to_utm, utm_epsg_for_lonlat
from tiles.records import Chip

DENSIFY_DEG = 0.01  # box edges are densified before projection: UTM bounds then within ~1 m of the true ones


def _check_lonlat(lon: float, lat: float) -> None:
    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180):
        raise InputError(f"lon/lat ({lon}, {lat}) must be finite with lon in [-180, 180]")
    if not UTM_MIN_LAT <= lat <= UTM_MAX_LAT:
        raise InputError(f"lat {lat:g} is outside the UTM latitudes [{UTM_MIN_LAT:g}, {UTM_MAX_LAT:g}]")


def point_chip(lon: float, lat: float, buffer_m: float, scale_m: float = 10.0) -> Chip:
    """The square of side 2*buffer_m (rounded to whole pixels) centred on the point, on the point's zone
    lattice: its centre is within half a pixel of the point in each axis."""
    _check_lonlat(lon, lat)
    if not (math.isfinite(buffer_m) and buffer_m > 0):
        raise InputError(f"buffer_m must be a finite number of metres > 0, got {buffer_m!r}")
    side = max(1, int(round(2 * buffer_m / scale_m)))
    epsg = utm_epsg_for_lonlat(lon, lat)
    x, y = to_utm(epsg).transform(lon, lat)
    x0 = int(math.floor(x / scale_m - side / 2 + 0.5))
    y0 = int(math.floor(y / scale_m - side / 2 + 0.5))
    return Chip(epsg, x0, y0, side, side, float(scale_m))


def bbox_chip(west: float, south: float, east: float, north: float, scale_m: float = 10.0) -> Chip:
    """The smallest lattice rectangle holding the lon/lat box (edges densified, so the curved UTM image
    of the box lies inside), in the zone of the box centre."""
    for lon, lat in ((west, south), (east, north)):
        _check_lonlat(lon, lat)
    if not (west < east and south < north):
        raise InputError(f"BBox needs minlon < maxlon and minlat < maxlat, got {(west, south, east, north)}")
    epsg = utm_epsg_for_lonlat((west + east) / 2, (south + north) / 2)
    box = shapely.segmentize(shapely.box(west, south, east, north), DENSIFY_DEG)
    min_x, min_y, max_x, max_y = project_to_utm(box, epsg).bounds
    x0, y0 = int(math.floor(min_x / scale_m)), int(math.floor(min_y / scale_m))
    x1, y1 = int(math.ceil(max_x / scale_m)), int(math.ceil(max_y / scale_m))
    return Chip(epsg, x0, y0, max(1, x1 - x0), max(1, y1 - y0), float(scale_m))


def chip_centre_utm(chip: Chip) -> np.ndarray:
    """(x, y) of the chip centre in its UTM CRS, metres."""
    return np.array([(chip.x0 + chip.width / 2) * chip.scale_m, (chip.y0 + chip.height / 2) * chip.scale_m])


def ground_resolution_m(chip: Chip, img_size: int) -> tuple:
    """(x, y) metres per model-input pixel once the chip is resized to ``img_size`` square."""
    return chip.width * chip.scale_m / img_size, chip.height * chip.scale_m / img_size
