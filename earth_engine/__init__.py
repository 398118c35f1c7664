"""Sentinel-2 pixels from Earth Engine (no Beam): image expression, computePixels client,
super-tiles, per-process quotas, retries with backoff, dead letters. See docs/ARCHITECTURE.md."""
from earth_engine.client import initialize
from earth_engine.errors import ErrorKind, NoScenesError, TooFewValidPixelsError, classify
from earth_engine.fetch import Fetcher, fetch_tiles
from earth_engine.image import s2_image
from earth_engine.metrics import FetchMetrics
from earth_engine.plan import FetchPlan, plan_requests
from earth_engine.settings import (HIGH_VOLUME_URL, SCENE_COUNT_BAND, EESettings, S2Settings)
from earth_engine.super_tiles import Block, block_id, effective_super_tile, group_into_blocks

__all__ = ["initialize", "ErrorKind", "NoScenesError", "TooFewValidPixelsError", "classify", "Fetcher",
           "fetch_tiles", "s2_image", "FetchMetrics", "FetchPlan", "plan_requests", "HIGH_VOLUME_URL",
           "SCENE_COUNT_BAND", "EESettings", "S2Settings", "Block", "block_id", "effective_super_tile",
           "group_into_blocks"]
