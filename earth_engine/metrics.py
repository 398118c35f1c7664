"""Fetch metrics collected without Beam; ``transforms.fetch`` publishes them as Beam Metrics.

Counters are gathered here and published from the DoFn's own thread because Beam Metrics only
count in the thread that runs the DoFn, not in the request threads.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Dict, List, Tuple

REQUESTS = "requests"        # computePixels calls sent (retries included)
RETRIES = "retries"
RATE_LIMITED = "http_429"
SERVER_ERRORS = "http_5xx"
TIMEOUTS = "timeouts"
BYTES = "bytes"
SUPER_TILE_FALLBACKS = "super_tile_fallbacks"
TILES_OK = "tiles_ok"
TILES_DEAD = "tiles_dead_lettered"


class FetchMetrics:
    """Thread-safe counters and request latencies (ms); ``drain`` hands them over and resets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._latencies_ms: List[int] = []

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def latency(self, seconds: float) -> None:
        with self._lock:
            self._latencies_ms.append(int(round(seconds * 1000)))

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def drain(self) -> Tuple[Dict[str, int], List[int]]:
        with self._lock:
            counts, latencies = dict(self._counts), self._latencies_ms
            self._counts, self._latencies_ms = Counter(), []
        return counts, latencies
