"""Dry-run estimates: how many computePixels requests, bytes and seconds a run needs."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from earth_engine.settings import S2Settings
from earth_engine.super_tiles import effective_super_tile


@dataclasses.dataclass(frozen=True)
class FetchPlan:
    n_tiles: int
    super_tile: int          # effective tiles per side per request (after the 48 MB limit)
    requests: int
    bytes: int
    seconds_at_quota: float  # lower bound: requests / (requests_per_second x workers)
    seconds_at_latency: Optional[float]  # with a per-request latency and the concurrency cap

    def describe(self) -> str:
        text = (f"{self.n_tiles} tiles -> {self.requests} computePixels requests "
                f"({self.super_tile}x{self.super_tile} tiles each), {self.bytes / 1e9:.2f} GB, "
                f">= {self.seconds_at_quota:.0f} s at the requests/s quota")
        if self.seconds_at_latency is not None:
            text += f", ~{self.seconds_at_latency:.0f} s at the concurrency cap"
        return text


def plan_requests(n_tiles: int, tile_px: int, s2: S2Settings = S2Settings(), workers: int = 1,
                  latency_s: Optional[float] = None) -> FetchPlan:
    """Estimate for ``n_tiles`` tiles, assuming full super-tile blocks (a lower bound on requests
    for ragged regions). ``workers`` processes each apply ``s2``'s per-process limits."""
    if n_tiles < 0 or tile_px < 1 or workers < 1:
        raise ValueError("n_tiles must be >= 0, tile_px and workers >= 1")
    n = effective_super_tile(s2, tile_px)
    requests = math.ceil(n_tiles / (n * n))
    nbytes = n_tiles * tile_px * tile_px * s2.bytes_per_pixel
    seconds_quota = requests / (s2.rate * workers)
    seconds_latency = None
    if latency_s is not None:
        seconds_latency = max(seconds_quota, requests * latency_s / (s2.concurrency * workers))
    return FetchPlan(n_tiles, n, requests, nbytes, seconds_quota, seconds_latency)
