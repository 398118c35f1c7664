"""Region -> tiles fan-out, in two cheap steps so nothing ever holds the full tile list.

1. ``plan_shards`` (launcher): per request, the region is split by UTM zone and hemisphere (6-degree
   bands, equator), each part is projected to its zone's CRS, and the part's grid rows are cut into
   bands of about ``target_tiles`` tiles. A ``PlanShard`` carries one band: the projected region clipped
   to it (WKB) and/or the buffer squares of points whose squares reach it. Work is O(zones + bands).
2. ``expand_shard`` (workers): per grid row, intersect the row strip with the shard's geometry; each
   connected piece of that intersection covers exactly the columns its x-extent spans, so the columns of
   a row come out as a few intervals without testing tiles one by one.

Rules (documented decisions):
- A tile is kept iff its footprint intersects the region with positive area (touching only along an
  edge, within 1 mm, does not count), so tiles that only touch a polygon's bounding box are dropped.
- Each zone/hemisphere part of a region is tiled in that zone's own grid. Near a zone boundary (or the
  equator) the tiles of both grids that reach the boundary are kept, so nothing is left uncovered, and a
  strip up to about one tile wide on each side is covered twice (e.g. 7-10 % of a 1x1 degree box on a
  zone seam at 512 px; benchmarks/bench_plan.py). Rows carry ``is_primary`` (``tiles.grid.is_primary``):
  keeping only those drops most duplicates, but the two grids do not line up, so a primary-only plan would
  leave gaps (~1 % of such a box) and is deliberately not offered.
- A tile id is emitted once per request id: all regions of one request are unioned first, and every
  grid row of a (request, zone) belongs to exactly one shard, so shards never repeat a tile.
- Points use the zone/hemisphere of the point itself. By default (``points_mode='chip'``) each point
  becomes one chip: the square of side 2*buffer_m centred on the point within half a pixel, its origin
  snapped to the zone's pixel lattice (``tiles.chips.point_chip``; buffer 0 = a tile_px square), with a
  stable id. ``points_mode='grid'`` keeps the grid tiles that the square touches.
- ``row_multiple``: band boundaries fall on multiples of this many grid rows (the height of one Earth
  Engine request in tiles), so packing a shard's tiles into requests is not cut short by the band edges.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union, cast

import numpy as np
import shapely

from tiles.errors import InputError
from tiles.grid import (UTM_MAX_LAT, UTM_MIN_LAT, epsg_zone, project_to_utm, to_utm, utm_epsg, utm_zone,
                        validate_grid, zone_lon_bounds)
from tiles.records import Chip, Tile, TileRequest, TimeWindow
from tiles.regions import Region

DEFAULT_TILE_PX = 512
DEFAULT_SCALE_M = 10.0
DEFAULT_TARGET_TILES = 1024
POINTS_MODES = ("chip", "grid")
EDGE_TOLERANCE_M = 1e-3       # contacts thinner than this are "touching", not "intersecting"
DENSIFY_DEG = 0.05            # lon/lat edges are densified before projection (sagitta << 1 m)

Interval = Tuple[int, int]   # inclusive column range


@dataclasses.dataclass(frozen=True)
class PlanShard:
    """Grid rows [row_start, row_stop) of one request in one UTM zone/hemisphere grid."""

    request_id: str
    epsg: int
    tile_px: int
    scale_m: float
    row_start: int
    row_stop: int
    geometry_wkb: Optional[bytes] = None                       # region in UTM metres, clipped to the band
    rects: Tuple[Tuple[float, float, float, float], ...] = ()  # point squares in UTM metres (x0, y0, x1, y1)
    chips: Tuple[Tuple[int, int, int, int], ...] = ()          # point chips: (x0, y0, width, height) pixels

    @property
    def size_m(self) -> float:
        return self.tile_px * self.scale_m


@dataclasses.dataclass
class PlanSummary:
    """What a plan would produce, for ``--dry-run``."""

    tiles: int = 0
    windows: int = 1
    shards: int = 0
    per_zone: Dict[int, int] = dataclasses.field(default_factory=dict)     # epsg -> tiles
    per_request: Dict[str, int] = dataclasses.field(default_factory=dict)  # request id -> tiles

    @property
    def tile_requests(self) -> int:
        return self.tiles * self.windows

    def to_text(self) -> str:
        lines = [f"{self.tiles} tiles x {self.windows} window(s) = {self.tile_requests} tile requests "
                 f"({self.shards} plan shards)"]
        lines += [f"  request {rid}: {n} tiles" for rid, n in sorted(self.per_request.items())]
        lines += [f"  EPSG:{epsg}: {n} tiles" for epsg, n in sorted(self.per_zone.items())]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ cell ranges

def _cell_ranges(lo: np.ndarray, hi: np.ndarray, size: float) -> Tuple[np.ndarray, np.ndarray]:
    """Inclusive cell ranges [c0, c1] of intervals [lo, hi]; a (near-)zero-length interval gets its one cell."""
    wide = hi - lo > 2 * EDGE_TOLERANCE_M
    c0 = np.where(wide, np.floor((lo + EDGE_TOLERANCE_M) / size), np.floor(lo / size))
    c1 = np.where(wide, np.ceil((hi - EDGE_TOLERANCE_M) / size) - 1, c0)
    return c0.astype(np.int64), c1.astype(np.int64)


# -------------------------------------------------------------------------------------- launcher

def _group_by_request(regions: Iterable[Region]) -> Dict[str, List[Region]]:
    groups: Dict[str, List[Region]] = collections.defaultdict(list)
    for region in regions:
        if not isinstance(region, Region):
            raise InputError(f"expected tiles.Region objects, got {type(region).__name__}")
        groups[region.request_id].append(region)
    if not groups:
        raise InputError("no regions to plan: give at least one --bbox, --geojson or --points")
    return dict(sorted(groups.items()))


def _zone_parts(geometry: shapely.Geometry) -> Dict[int, shapely.Geometry]:
    """Lon/lat geometry split into zone/hemisphere parts, keyed by EPSG (zero-area parts dropped)."""
    candidates = set()
    for part in shapely.get_parts(geometry):
        min_x, min_y, max_x, max_y = part.bounds
        for zone in range(utm_zone(min_x), utm_zone(max_x) + 1):
            if max_y > 0:
                candidates.add(utm_epsg(zone, True))
            if min_y < 0:
                candidates.add(utm_epsg(zone, False))
    shapely.prepare(geometry)
    parts = {}
    for epsg in sorted(candidates):
        zone, north = epsg_zone(epsg)
        west, east = zone_lon_bounds(zone)
        band = shapely.box(west, 0.0 if north else UTM_MIN_LAT, east, UTM_MAX_LAT if north else 0.0)
        if not geometry.intersects(band):
            continue
        clipped = shapely.intersection(geometry, band)
        if clipped.area > 0:
            parts[epsg] = clipped
    return parts


def _projected_polygons(geometry: shapely.Geometry, epsg: int) -> Optional[shapely.Geometry]:
    """Zone part projected to UTM, polygonal and valid (None if nothing with area is left)."""
    projected = project_to_utm(shapely.segmentize(geometry, DENSIFY_DEG), epsg)
    if not projected.is_valid:
        projected = shapely.make_valid(projected)
    polygons = [p for p in shapely.get_parts(projected) if p.geom_type in ("Polygon", "MultiPolygon")]
    polygons = [p for p in polygons if p.area > 0]
    return shapely.union_all(polygons) if polygons else None


def _point_rects(regions: Sequence[Region]) -> Dict[int, np.ndarray]:
    """Buffer squares of all points of a request, in each point's own UTM grid: epsg -> (n, 4)."""
    lonlat: List[Tuple[float, float]] = []
    buffers: List[float] = []
    for region in regions:
        lonlat.extend(region.points)
        buffers.extend([region.buffer_m] * len(region.points))
    if not lonlat:
        return {}
    coords, half = np.asarray(lonlat, dtype=np.float64), np.asarray(buffers, dtype=np.float64)
    zones = np.minimum(np.floor((coords[:, 0] + 180.0) / 6.0).astype(int) + 1, 60)
    epsgs = np.where(coords[:, 1] >= 0, 32600, 32700) + zones
    rects = {}
    for epsg in np.unique(epsgs):
        mask = epsgs == epsg
        x, y = to_utm(int(epsg)).transform(coords[mask, 0], coords[mask, 1])
        h = half[mask]
        rects[int(epsg)] = np.column_stack([x - h, y - h, x + h, y + h])
    return rects


def _row_costs(polygons: Optional[shapely.Geometry], rects: Optional[np.ndarray],
               size: float) -> Tuple[int, np.ndarray]:
    """(first row, estimated tiles per row) of one request in one zone."""
    spans = []  # (row0, row1, cols per row)
    if polygons is not None:
        min_x, min_y, max_x, max_y = polygons.bounds
        (r0,), (r1,) = _cell_ranges(np.array([min_y]), np.array([max_y]), size)
        (c0,), (c1,) = _cell_ranges(np.array([min_x]), np.array([max_x]), size)
        spans.append((np.array([r0]), np.array([r1]), np.array([c1 - c0 + 1])))
    if rects is not None and len(rects):
        r0, r1 = _cell_ranges(rects[:, 1], rects[:, 3], size)
        c0, c1 = _cell_ranges(rects[:, 0], rects[:, 2], size)
        spans.append((r0, r1, c1 - c0 + 1))
    row0s, row1s, cols = (np.concatenate(column) for column in zip(*spans))
    first, last = int(row0s.min()), int(row1s.max())
    diff = np.zeros(last - first + 2, dtype=np.int64)
    np.add.at(diff, row0s - first, cols)
    np.add.at(diff, row1s - first + 1, -cols)
    return first, np.cumsum(diff[:-1])


def _bands(costs: np.ndarray, target: int, row_multiple: int = 1) -> List[Tuple[int, int]]:
    """Cut rows into contiguous bands [start, stop) of about ``target`` estimated tiles, each a whole number of
    ``row_multiple`` rows (but the last); empty bands dropped."""
    k = max(1, int(row_multiple))
    if k > 1:
        chunks = np.add.reduceat(costs, np.arange(0, len(costs), k)) if len(costs) else costs
        return [(a * k, min(b * k, len(costs))) for a, b in _bands(chunks, target)]
    before = np.cumsum(costs) - costs
    band_of_row = before // max(1, target)
    starts = np.flatnonzero(np.diff(band_of_row, prepend=-1))
    stops = np.append(starts[1:], len(costs))
    return [(int(a), int(b)) for a, b in zip(starts, stops) if costs[a:b].sum() > 0]


def _zone_shards(request_id: str, epsg: int, polygons: Optional[shapely.Geometry], rects: Optional[np.ndarray],
                 tile_px: int, scale_m: float, target: int, row_multiple: int = 1) -> Iterator[PlanShard]:
    size = tile_px * scale_m
    first, costs = _row_costs(polygons, rects, size)
    bands = _bands(costs, target, row_multiple)
    band_geoms: List[Optional[bytes]] = [None] * len(bands)
    if polygons is not None:
        min_x, _, max_x, _ = polygons.bounds
        boxes = shapely.box(min_x - size, [(first + a) * size for a, _ in bands],
                            max_x + size, [(first + b) * size for _, b in bands])
        clipped = shapely.intersection(polygons, boxes)
        band_geoms = [None if g.is_empty or g.area <= 0 else shapely.to_wkb(g) for g in clipped]
    if rects is not None and len(rects):
        rect_r0, rect_r1 = _cell_ranges(rects[:, 1], rects[:, 3], size)
    for (a, b), wkb in zip(bands, band_geoms):
        row_start, row_stop = first + a, first + b
        band_rects: Tuple = ()
        if rects is not None and len(rects):
            mask = (rect_r1 >= row_start) & (rect_r0 < row_stop)
            band_rects = tuple(tuple(float(v) for v in r) for r in rects[mask])
        if wkb is not None or band_rects:
            yield PlanShard(request_id, epsg, tile_px, scale_m, row_start, row_stop, wkb, band_rects)


def _chip_shards(request_id: str, group: Sequence[Region], tile_px: int, scale_m: float,
                 target: int) -> Iterator[PlanShard]:
    """Point chips of one request, per zone, in runs of about ``target`` chips ordered north to south in
    bands (then west to east) so that neighbours land in one shard and share requests."""
    from tiles.chips import point_chip

    by_epsg: Dict[int, Dict[Tuple[int, int, int, int], None]] = collections.defaultdict(dict)
    for region in group:
        buffer_m = region.buffer_m if region.buffer_m > 0 else tile_px * scale_m / 2
        for lon, lat in region.points:
            chip = point_chip(lon, lat, buffer_m, scale_m)
            by_epsg[chip.epsg][chip.pixel_box] = None
    for epsg in sorted(by_epsg):
        boxes = sorted(by_epsg[epsg], key=lambda b: (-((b[1] + b[3]) // 2048), b[0], -b[1]))
        for start in range(0, len(boxes), max(1, target)):
            run = tuple(boxes[start:start + max(1, target)])
            yield PlanShard(request_id, epsg, tile_px, scale_m, min(b[1] for b in run),
                            max(b[1] + b[3] for b in run), chips=run)


def plan_shards(regions: Iterable[Region], tile_px: int = DEFAULT_TILE_PX, scale_m: float = DEFAULT_SCALE_M,
                target_tiles: int = DEFAULT_TARGET_TILES, points_mode: str = "chip",
                row_multiple: int = 1) -> Iterator[PlanShard]:
    """Coarse plan shards in a deterministic order (by request id, EPSG, row); lazy, cheap."""
    validate_grid(tile_px, scale_m)
    if points_mode not in POINTS_MODES:
        raise InputError(f"--points-mode {points_mode!r} is not one of {', '.join(POINTS_MODES)}")
    for request_id, group in _group_by_request(regions).items():
        geometries = [r.geometry for r in group if r.geometry is not None]
        parts: Dict[int, shapely.Geometry] = {}
        if geometries:
            union = geometries[0] if len(geometries) == 1 else shapely.union_all(geometries)
            parts = _zone_parts(union)
        point_regions = [r for r in group if r.points]
        rects = _point_rects(group) if points_mode == "grid" else {}
        for epsg in sorted(set(parts) | set(rects)):
            polygons = _projected_polygons(parts[epsg], epsg) if epsg in parts else None
            if polygons is None and epsg not in rects:
                continue
            yield from _zone_shards(request_id, epsg, polygons, rects.get(epsg), tile_px, scale_m, target_tiles,
                                    row_multiple)
        if points_mode == "chip" and point_regions:
            yield from _chip_shards(request_id, point_regions, tile_px, scale_m, target_tiles)


# --------------------------------------------------------------------------------------- workers

def shard_rows(shard: PlanShard) -> Iterator[Tuple[int, List[Interval]]]:
    """(row, merged inclusive column intervals) for every non-empty row of a shard, in row order."""
    size = shard.size_m
    rows_all, c0_all, c1_all = [], [], []
    if shard.geometry_wkb is not None:
        geometry = shapely.from_wkb(shard.geometry_wkb)
        min_x, _, max_x, _ = geometry.bounds
        rows = np.arange(shard.row_start, shard.row_stop)
        strips = shapely.box(min_x - size, rows * size, max_x + size, (rows + 1) * size)
        pieces, index = shapely.get_parts(shapely.intersection(geometry, strips), return_index=True)
        if len(pieces):
            keep = shapely.get_type_id(pieces) == 3  # Polygon
            bounds = shapely.bounds(pieces[keep])
            index = index[keep]
            thick = ((bounds[:, 2] - bounds[:, 0]) > 2 * EDGE_TOLERANCE_M) & \
                    ((bounds[:, 3] - bounds[:, 1]) > 2 * EDGE_TOLERANCE_M)
            c0, c1 = _cell_ranges(bounds[thick, 0], bounds[thick, 2], size)
            rows_all.append(rows[index[thick]])
            c0_all.append(c0)
            c1_all.append(c1)
    if shard.rects:
        rects = np.asarray(shard.rects, dtype=float)
        r0, r1 = _cell_ranges(rects[:, 1], rects[:, 3], size)
        r0, r1 = np.maximum(r0, shard.row_start), np.minimum(r1, shard.row_stop - 1)
        c0, c1 = _cell_ranges(rects[:, 0], rects[:, 2], size)
        counts = np.maximum(r1 - r0 + 1, 0)
        repeat = np.repeat(np.arange(len(rects)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        rows_all.append(r0[repeat] + offsets)
        c0_all.append(c0[repeat])
        c1_all.append(c1[repeat])
    if not rows_all:
        return
    rows, c0, c1 = np.concatenate(rows_all), np.concatenate(c0_all), np.concatenate(c1_all)
    order = np.lexsort((c0, rows))
    current_row: Optional[int] = None  # set with the first run, before anything is yielded
    merged: List[Tuple[int, int]] = []
    for row, lo, hi in zip(rows[order].tolist(), c0[order].tolist(), c1[order].tolist()):
        if row != current_row:
            if merged:
                yield cast(int, current_row), merged
            current_row, merged = row, [(lo, hi)]
        elif lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    if merged:
        yield cast(int, current_row), merged


def expand_shard(shard: PlanShard) -> Iterator[Union[Tile, Chip]]:
    """The tiles of one shard, row by row, west to east; then its point chips."""
    if shard.geometry_wkb is not None or shard.rects:
        for row, intervals in shard_rows(shard):
            for lo, hi in intervals:
                for column in range(lo, hi + 1):
                    yield Tile(shard.epsg, column, row, shard.tile_px, shard.scale_m)
    for x0, y0, width, height in shard.chips:
        yield Chip(shard.epsg, x0, y0, width, height, shard.scale_m)


def expand_shard_requests(shard: PlanShard, windows: Sequence[TimeWindow]) -> Iterator[TileRequest]:
    """Every tile of a shard for every window, tagged with the shard's request id."""
    for tile in expand_shard(shard):
        for window in windows:
            yield TileRequest(tile, window, shard.request_id)


def count_shard(shard: PlanShard) -> int:
    return sum(hi - lo + 1 for _, intervals in shard_rows(shard) for lo, hi in intervals) + len(shard.chips)


# ------------------------------------------------------------------------------- whole-plan views

def plan_requests(regions: Iterable[Region], windows: Sequence[TimeWindow], tile_px: int = DEFAULT_TILE_PX,
                  scale_m: float = DEFAULT_SCALE_M, points_mode: str = "chip") -> Iterator[TileRequest]:
    """Pure-Python equivalent of ``transforms.plan.PlanTiles`` (lazy; for tests and small local runs)."""
    windows = check_windows(windows)
    for shard in plan_shards(regions, tile_px, scale_m, points_mode=points_mode):
        yield from expand_shard_requests(shard, windows)


def plan_summary(regions: Iterable[Region], windows: Sequence[TimeWindow] = (), tile_px: int = DEFAULT_TILE_PX,
                 scale_m: float = DEFAULT_SCALE_M, points_mode: str = "chip") -> PlanSummary:
    """Tile counts for ``--dry-run``; iterates shards, never a tile list, so memory stays bounded."""
    return summarize_shards(plan_shards(regions, tile_px, scale_m, points_mode=points_mode), windows)


def summarize_shards(shards: Iterable[PlanShard], windows: Sequence[TimeWindow] = ()) -> PlanSummary:
    """Tile counts of already planned shards (so the launcher plans once for counting and for PlanTiles)."""
    summary = PlanSummary(windows=len(windows) if windows else 1)
    for shard in shards:
        count = count_shard(shard)
        summary.shards += 1
        summary.tiles += count
        summary.per_zone[shard.epsg] = summary.per_zone.get(shard.epsg, 0) + count
        summary.per_request[shard.request_id] = summary.per_request.get(shard.request_id, 0) + count
    return summary


def count_tiles(regions: Iterable[Region], tile_px: int = DEFAULT_TILE_PX, scale_m: float = DEFAULT_SCALE_M,
                points_mode: str = "chip") -> int:
    """Number of distinct (request id, tile) pairs."""
    return plan_summary(regions, (), tile_px, scale_m, points_mode).tiles


def check_windows(windows: Sequence[TimeWindow]) -> Tuple[TimeWindow, ...]:
    windows = tuple(windows)
    if not windows:
        raise InputError("no time windows: give --start/--end or --year")
    if len(set(windows)) != len(windows):
        raise InputError("time windows repeat; each window must be given once")
    return windows
