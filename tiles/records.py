"""Plain records that flow between the stages of the pipeline.

They are Beam-free, Earth-Engine-free and torch-free so that every layer (tiling, Earth Engine fetch,
model, Beam transforms) can share them. All are picklable dataclasses.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class TimeWindow:
    """Half-open date range [start, end), the card's ``TemporalSpec.range``."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(
                f"time window end {self.end} must be after start {self.start} (end is exclusive)")

    @property
    def key(self) -> str:
        return f"{self.start.isoformat()}_{self.end.isoformat()}"


def scale_text(scale_m: float) -> str:
    """The shortest spelling of a pixel size that reads back as the same float ('10', '2.5', '0.3')."""
    text = repr(float(scale_m))
    return text[:-2] if text.endswith(".0") else text


@dataclasses.dataclass(frozen=True)
class Tile:
    """One square tile of a UTM grid: ``tile_px`` pixels of ``scale_m`` metres on a side.

    Tile (ix, iy) covers eastings [ix*T, (ix+1)*T) and northings [iy*T, (iy+1)*T) with T = tile_px*scale_m,
    in the zone's own EPSG:326zz (north) / EPSG:327zz (south) coordinates, so tiles are pixel-aligned
    and ids are stable across runs and machines.
    """

    epsg: int
    ix: int
    iy: int
    tile_px: int
    scale_m: float

    @property
    def size_m(self) -> float:
        return self.tile_px * self.scale_m

    @property
    def tile_id(self) -> str:
        return f"{self.epsg}_{self.tile_px}px{scale_text(self.scale_m)}m_{self.ix}_{self.iy}"

    @property
    def pixel_box(self) -> Tuple[int, int, int, int]:
        """(x0, y0, width, height) on the zone's ``scale_m`` pixel lattice (see ``Chip``)."""
        return self.ix * self.tile_px, self.iy * self.tile_px, self.tile_px, self.tile_px

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def transform(self) -> Tuple[float, float, float, float, float, float]:
        """Affine pixel grid in Earth Engine's order: xScale, xShear, xTranslation, yShear, yScale, yTranslation."""
        return (self.scale_m, 0.0, self.ix * self.size_m, 0.0, -self.scale_m, (self.iy + 1) * self.size_m)


@dataclasses.dataclass(frozen=True)
class Chip:
    """A rectangle of whole pixels on a UTM zone's pixel lattice (pixel (i, j) covers eastings
    [i*scale_m, (i+1)*scale_m) and northings [j*scale_m, (j+1)*scale_m)): columns [x0, x0+width),
    rows [y0, y0+height), counted east and north. A grid ``Tile`` is the special case x0 = ix*tile_px,
    y0 = iy*tile_px, width = height = tile_px; a chip can sit anywhere on the lattice (a point's centred
    square, a pixel-snapped box) and still shares Earth Engine requests with its neighbours.
    """

    epsg: int
    x0: int
    y0: int
    width: int
    height: int
    scale_m: float

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"chip width and height must be >= 1 pixel, got {self.width}x{self.height}")

    @property
    def tile_px(self) -> int:
        """Side in pixels (the width; the pipeline's chips are square)."""
        return self.width

    @property
    def size_m(self) -> float:
        return max(self.width, self.height) * self.scale_m

    @property
    def pixel_box(self) -> Tuple[int, int, int, int]:
        return self.x0, self.y0, self.width, self.height

    @property
    def tile_id(self) -> str:
        """Stable id: EPSG_<w>x<h>px<scale>m_<x0>_<y0> (pixel origin of the south-west corner)."""
        return f"{self.epsg}_{self.width}x{self.height}px{scale_text(self.scale_m)}m_{self.x0}_{self.y0}"

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def transform(self) -> Tuple[float, float, float, float, float, float]:
        """Affine pixel grid in Earth Engine's order (see ``Tile.transform``)."""
        return (self.scale_m, 0.0, self.x0 * self.scale_m, 0.0, -self.scale_m,
                (self.y0 + self.height) * self.scale_m)


@dataclasses.dataclass(frozen=True)
class TileRequest:
    """A tile and a time window to embed, tagged with the id of the user request it came from."""

    tile: "Tile | Chip"
    window: TimeWindow
    request_id: str = "default"
    # The Earth Engine request block the planner packed this tile into (None: pack at fetch time).
    block: Optional[str] = dataclasses.field(default=None, compare=False)

    @property
    def key(self) -> str:
        """Unique key of one output row: the tile and the window."""
        return row_key(self.tile.tile_id, self.window)


def row_key(tile_id: str, window: TimeWindow) -> str:
    """The one spelling of an output row's key (``TileRequest.key``, and the key of rows read back)."""
    return f"{tile_id}/{window.key}"


@dataclasses.dataclass
class TilePixels:
    """Fetched Sentinel-2 pixels of one tile request: raw SR values, CHW in (B4, B3, B2) order."""

    request: TileRequest
    chw: np.ndarray  # (3, tile_px, tile_px) uint16 raw surface reflectance, 0 where masked
    valid_fraction: float
    n_scenes: Optional[int] = None


@dataclasses.dataclass
class DeadLetter:
    """A tile request that could not be embedded, with the reason. Never silently dropped."""

    key: str
    tile_id: str
    request_id: str
    stage: str  # 'fetch' | 'inference' | 'write' | ...
    error_class: str
    message: str
    attempts: int = 1

    @classmethod
    def for_request(cls, request: TileRequest, stage: str, error: BaseException | str,
                    attempts: int = 1, error_class: Optional[str] = None) -> "DeadLetter":
        """The dead letter of `request`; `error_class` overrides the class name taken from `error`."""
        if isinstance(error, BaseException):
            default_class, message = type(error).__name__, str(error)
        else:
            default_class, message = "Error", error
        error_class = error_class or default_class
        return cls(key=request.key, tile_id=request.tile.tile_id, request_id=request.request_id,
                   stage=stage, error_class=error_class, message=message, attempts=attempts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
