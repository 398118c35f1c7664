"""Sentinel-2 pixels from Earth Engine (no Beam): image expression, computePixels client, requests packed
by EE's size rule, the per-process quota budget, retries with backoff, dead letters. See docs/ARCHITECTURE.md."""
from earth_engine.client import initialize
from earth_engine.errors import ErrorKind, NoScenesError, TooFewValidPixelsError, classify
from earth_engine.fetch import Fetcher, fetch_tiles
from earth_engine.image import s2_image
from earth_engine.metrics import FetchMetrics
from earth_engine.packing import Block, count_requests, group_key, max_request_pixels, pack
from earth_engine.plan import FetchPlan
from earth_engine.quota import EEBudget, QuotaError, ee_budget
from earth_engine.settings import (HIGH_VOLUME_URL, SCENE_COUNT_BAND, EESettings, S2Settings)

__all__ = ["initialize", "ErrorKind", "NoScenesError", "TooFewValidPixelsError", "classify", "Fetcher",
           "fetch_tiles", "s2_image", "FetchMetrics", "FetchPlan", "HIGH_VOLUME_URL", "SCENE_COUNT_BAND",
           "EESettings", "S2Settings", "Block", "count_requests", "group_key", "max_request_pixels", "pack",
           "EEBudget", "QuotaError", "ee_budget"]
