"""Brute-force tile reference for tests: every candidate tile tested one by one with shapely + pyproj.

Deliberately independent of tiles.planning (no row intervals, no shards).
"""
from __future__ import annotations

import math

import numpy as np
import pyproj
import shapely


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
            projected = shapely.transform(shapely.segmentize(part, 0.01),
                                          lambda xy: np.column_stack(forward.transform(xy[:, 0], xy[:, 1])))
            min_x, min_y, max_x, max_y = projected.bounds
            for ix in range(math.floor(min_x / size) - 1, math.floor(max_x / size) + 2):
                for iy in range(math.floor(min_y / size) - 1, math.floor(max_y / size) + 2):
                    footprint = shapely.box(ix * size, iy * size, (ix + 1) * size, (iy + 1) * size)
                    if footprint.intersection(projected).area > 1.0:  # > 1 m^2: more than touching
                        found.add((epsg, ix, iy))
    return found
