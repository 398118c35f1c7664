"""``PlanTiles``: user regions x time windows -> TileRequests, expanded and packed on the workers.

The launcher only computes coarse plan shards (``tiles.plan_shards``: bands of grid rows per request and
UTM zone, a whole number of request heights each, and runs of point chips); ``Reshuffle`` spreads them
over workers, which expand each shard into its tiles, pack them into Earth Engine requests
(``earth_engine.packing``) and emit one TileRequest per tile and window, stamped with its request block.
The tile list is never materialised on the launcher.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import apache_beam as beam

from earth_engine.packing import count_requests, fits, max_request_pixels, pack_boxes, window_shape
from earth_engine.settings import S2Settings
from tiles.planning import (DEFAULT_SCALE_M, DEFAULT_TARGET_TILES, DEFAULT_TILE_PX, PlanShard, check_windows,
                            expand_shard, plan_shards, summarize_shards)
from tiles.records import Chip, Tile, TileRequest, TimeWindow
from tiles.regions import Region


def block_rows(tile_px: int, s2: S2Settings) -> int:
    """Grid rows of one packed request of tile_px tiles (what shard bands are a multiple of)."""
    max_px = max_request_pixels(s2)
    return window_shape(tile_px, tile_px, max_px)[1] // tile_px if tile_px * tile_px <= max_px else 1


def shard_key(shard: PlanShard) -> str:
    return f"{shard.request_id}/{shard.epsg}/{shard.tile_px}px/r{shard.row_start}" + ("c" if shard.chips else "")


def packed_shard(shard: PlanShard, s2: S2Settings) -> List[Tuple[Union[Tile, Chip], str]]:
    """(tile or chip, request block id) for every tile of the shard: its boxes packed into requests."""
    areas = list(expand_shard(shard))
    boxes = [a.pixel_box for a in areas]
    max_px = max_request_pixels(s2)
    block_of = {}
    small = [b for b in dict.fromkeys(boxes) if fits(b, max_px)]
    for index, members in enumerate(pack_boxes(small, max_px)):
        for i in members:
            block_of[small[i]] = f"{shard_key(shard)}/b{index}"
    key = shard_key(shard)
    return [(a, block_of.get(b, f"{key}/x{b[0]}_{b[1]}")) for a, b in zip(areas, boxes)]


def expand_and_pack(shard: PlanShard, windows: Sequence[TimeWindow], s2: S2Settings) -> Iterator[TileRequest]:
    """Every tile of a shard for every window, tagged with the shard's request id and its request block."""
    for area, block in packed_shard(shard, s2):
        for window in windows:
            yield TileRequest(area, window, shard.request_id, block=block)


def shard_requests(shard: PlanShard, s2: S2Settings) -> int:
    """computePixels requests of one shard per window (what ``expand_and_pack`` leads to)."""
    return count_requests([a.pixel_box for a in expand_shard(shard)], s2)


@dataclasses.dataclass(frozen=True)
class PlanSettings:
    """Where and when to embed: what `pipeline.options.RegionOptions` resolves to."""

    regions: Sequence[Region]
    windows: Sequence[TimeWindow]
    tile_px: int = DEFAULT_TILE_PX
    scale_m: float = DEFAULT_SCALE_M
    points_mode: str = "chip"


class PlanTiles(beam.PTransform):
    """PBegin -> PCollection[TileRequest]: every (request id, tile, window) once, packed into request blocks.

    Args:
        regions: The regions to embed.
        windows: Their time windows (each region in every window).
        tile_px: Tile side in pixels (default 512).
        scale_m: Metres per pixel (default 10).
        target_tiles: About this many tiles per plan shard, the unit of parallel planning (default 1024).
        label: The transform's label.
        s2: The Sentinel-2 settings requests are packed for; default `S2Settings()`.
        points_mode: 'chip' (default: one chip centred on each point) or 'grid' (the grid tiles it touches).

    Raises:
        InputError: Bad regions or windows, here at construction (on the launcher).
    """

    def __init__(self, regions: Sequence[Region], windows: Sequence[TimeWindow], tile_px: int = DEFAULT_TILE_PX,
                 scale_m: float = DEFAULT_SCALE_M, target_tiles: int = DEFAULT_TARGET_TILES,
                 label: str | None = None, s2: Optional[S2Settings] = None, points_mode: str = "chip") -> None:
        super().__init__(label)
        self._windows = check_windows(windows)
        self._s2 = s2 or S2Settings()
        # Shards are computed here, at construction on the launcher, so bad regions fail before the run.
        self.shards: Tuple[PlanShard, ...] = tuple(plan_shards(
            regions, tile_px, scale_m, target_tiles, points_mode=points_mode,
            row_multiple=block_rows(tile_px, self._s2)))

    @classmethod
    def from_settings(cls, plan: PlanSettings, s2: Optional[S2Settings] = None) -> "PlanTiles":
        """The transform for a run's plan settings (and the Sentinel-2 settings its requests are packed for)."""
        return cls(plan.regions, plan.windows, plan.tile_px, plan.scale_m, s2=s2, points_mode=plan.points_mode)

    @property
    def planned_requests(self) -> int:
        """Tile requests (tiles x windows) this transform will emit, counted from its shards."""
        return summarize_shards(self.shards, self._windows).tile_requests

    def expand(self, pbegin):
        return (pbegin
                | "CreateShards" >> beam.Create(self.shards)
                | "SpreadShards" >> beam.Reshuffle()
                | "ExpandShards" >> beam.FlatMap(expand_and_pack, self._windows, self._s2).with_output_types(
                    TileRequest))
