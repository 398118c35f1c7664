"""Super-tiles: adjacent tiles of one zone, grid and window fetched in one computePixels request."""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Dict, Iterable, List, Tuple

import numpy as np

from earth_engine.settings import COMPUTE_PIXELS_MAX_BYTES, COMPUTE_PIXELS_MAX_SIDE_PX, S2Settings
from tiles.records import TileRequest, TimeWindow

_NPY_HEADER_ALLOWANCE = 4096


def max_super_tile(tile_px: int, bytes_per_pixel: int) -> int:
    """Largest n such that an n x n block of tiles stays under the per-request byte and size limits."""
    budget = COMPUTE_PIXELS_MAX_BYTES - _NPY_HEADER_ALLOWANCE
    n = int(math.isqrt(budget // (tile_px * tile_px * bytes_per_pixel)))
    return max(1, min(n, COMPUTE_PIXELS_MAX_SIDE_PX // tile_px))


def effective_super_tile(s2: S2Settings, tile_px: int) -> int:
    """The configured super-tile size, reduced where a block would break the 48 MB limit."""
    return max(1, min(s2.super_tile, max_super_tile(tile_px, s2.bytes_per_pixel)))


BlockKey = Tuple[int, int, float, TimeWindow, int, int]  # epsg, tile_px, scale_m, window, bx, by


def block_key(request: TileRequest, super_tile: int) -> BlockKey:
    """Requests with equal keys can share one computePixels call."""
    t = request.tile
    return (t.epsg, t.tile_px, t.scale_m, request.window, t.ix // super_tile, t.iy // super_tile)


@dataclasses.dataclass
class Block:
    """The requests of one computePixels call; its grid is the bounding box of their tiles."""

    requests: List[TileRequest]

    def __post_init__(self) -> None:
        first = self.requests[0].tile
        self.epsg, self.tile_px, self.scale_m = first.epsg, first.tile_px, first.scale_m
        self.window = self.requests[0].window
        ixs = [r.tile.ix for r in self.requests]
        iys = [r.tile.iy for r in self.requests]
        self.ix0, self.ix1, self.iy0, self.iy1 = min(ixs), max(ixs), min(iys), max(iys)

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def n_tiles(self) -> int:
        """Distinct tiles (several user requests may ask for the same tile)."""
        return len({(r.tile.ix, r.tile.iy) for r in self.requests})

    @property
    def width(self) -> int:
        return (self.ix1 - self.ix0 + 1) * self.tile_px

    @property
    def height(self) -> int:
        return (self.iy1 - self.iy0 + 1) * self.tile_px

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        size = self.tile_px * self.scale_m
        return (self.ix0 * size, self.iy0 * size, (self.ix1 + 1) * size, (self.iy1 + 1) * size)

    def grid(self) -> dict:
        """The computePixels ``grid``: the tiles' own UTM pixel grid, north up."""
        xmin, _, _, ymax = self.bounds
        return {
            "dimensions": {"width": self.width, "height": self.height},
            "affineTransform": {"scaleX": self.scale_m, "shearX": 0, "translateX": xmin,
                                "shearY": 0, "scaleY": -self.scale_m, "translateY": ymax},
            "crsCode": self.crs,
        }

    def cut(self, pixels: np.ndarray, request: TileRequest) -> np.ndarray:
        """The (tile_px, tile_px) window of the block's array that belongs to this request's tile."""
        col = (request.tile.ix - self.ix0) * self.tile_px
        row = (self.iy1 - request.tile.iy) * self.tile_px
        return pixels[row:row + self.tile_px, col:col + self.tile_px]

    def singles(self) -> List["Block"]:
        """One block per distinct tile, for the fallback after a failed super-tile."""
        by_tile: Dict[Tuple[int, int], List[TileRequest]] = OrderedDict()
        for r in self.requests:
            by_tile.setdefault((r.tile.ix, r.tile.iy), []).append(r)
        return [Block(rs) for rs in by_tile.values()]


def group_into_blocks(requests: Iterable[TileRequest], s2: S2Settings) -> List[Block]:
    """Group requests into super-tile blocks (deterministic order: first appearance)."""
    groups: Dict[BlockKey, List[TileRequest]] = OrderedDict()
    for r in requests:
        groups.setdefault(block_key(r, effective_super_tile(s2, r.tile.tile_px)), []).append(r)
    return [Block(rs) for rs in groups.values()]


def block_id(request: TileRequest, s2: S2Settings) -> str:
    """``block_key`` as a string: a deterministic key for grouping in a Beam pipeline."""
    epsg, tile_px, scale_m, window, bx, by = block_key(
        request, effective_super_tile(s2, request.tile.tile_px))
    return f"{epsg}/{tile_px}px{scale_m:g}m/{window.key}/{bx}_{by}"
