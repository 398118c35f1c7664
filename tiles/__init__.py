"""Tiling layer: regions, time windows, the UTM tile grid and the request -> tile plan (no Beam, EE, torch)."""
from tiles.chips import bbox_chip, point_chip
from tiles.errors import InputError
from tiles.grid import (is_primary, tile_bounds_utm, tile_center_lonlat, tile_containing, tile_footprint_utm,
                        tile_footprint_wgs84, tile_from_id, utm_epsg, utm_epsg_for_lonlat, utm_zone)
from tiles.planning import (PlanShard, PlanSummary, count_tiles, expand_shard, expand_shard_requests,
                            plan_requests, plan_shards, plan_summary, summarize_shards)
from tiles.records import Chip, DeadLetter, Tile, TilePixels, TileRequest, TimeWindow
from tiles.regions import Region, load_regions, parse_bbox, parse_geojson, parse_points_csv
from tiles.time_windows import S2_SR_HARMONIZED_START, parse_windows, split_windows, time_range

__all__ = [
    "InputError", "Region", "load_regions", "parse_bbox", "parse_geojson", "parse_points_csv",
    "S2_SR_HARMONIZED_START", "parse_windows", "split_windows", "time_range",
    "Tile", "Chip", "TimeWindow", "TileRequest", "TilePixels", "DeadLetter", "point_chip", "bbox_chip", "is_primary",
    "tile_bounds_utm", "tile_center_lonlat", "tile_containing", "tile_footprint_utm", "tile_footprint_wgs84",
    "tile_from_id", "utm_epsg", "utm_epsg_for_lonlat", "utm_zone",
    "PlanShard", "PlanSummary", "count_tiles", "expand_shard", "expand_shard_requests", "plan_requests",
    "plan_shards", "plan_summary", "summarize_shards",
]
