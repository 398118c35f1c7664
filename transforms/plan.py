"""``PlanTiles``: user regions x time windows -> TileRequests, expanded on the workers.

The launcher only computes coarse plan shards (``tiles.plan_shards``: bands of grid rows per request and
UTM zone, about a thousand tiles each); ``Reshuffle`` spreads them over workers, which expand each shard
into its TileRequests. The tile list is never materialised on the launcher.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import apache_beam as beam

from tiles.planning import (DEFAULT_SCALE_M, DEFAULT_TARGET_TILES, DEFAULT_TILE_PX, PlanShard, check_windows,
                            expand_shard_requests, plan_shards, summarize_shards)
from tiles.records import TileRequest, TimeWindow
from tiles.regions import Region


class PlanTiles(beam.PTransform):
    """PBegin -> PCollection[TileRequest]: every (request id, tile, window) once."""

    def __init__(self, regions: Sequence[Region], windows: Sequence[TimeWindow], tile_px: int = DEFAULT_TILE_PX,
                 scale_m: float = DEFAULT_SCALE_M, target_tiles: int = DEFAULT_TARGET_TILES,
                 label: str | None = None) -> None:
        super().__init__(label)
        self._windows = check_windows(windows)
        # Shards are computed here, at construction on the launcher, so bad regions fail before the run.
        self.shards: Tuple[PlanShard, ...] = tuple(plan_shards(regions, tile_px, scale_m, target_tiles))

    @property
    def planned_requests(self) -> int:
        """Tile requests (tiles x windows) this transform will emit, counted from its shards."""
        return summarize_shards(self.shards, self._windows).tile_requests

    def expand(self, pbegin):
        return (pbegin
                | "CreateShards" >> beam.Create(self.shards)
                | "SpreadShards" >> beam.Reshuffle()
                | "ExpandShards" >> beam.FlatMap(expand_shard_requests, self._windows).with_output_types(TileRequest))
