"""Per-process request limits: a concurrency cap and a requests-per-second token bucket.

Shared by every fetcher in the process (Beam runs several DoFn threads per worker process), so the
caps hold for the process as a whole.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Dict, Iterator, Tuple


class TokenBucket:
    """Blocks ``acquire`` so that at most ``rate`` requests start per second (bursts up to ``burst``)."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self._tokens = self.capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.rate
            time.sleep(wait)


class RequestLimiter:
    """Concurrency cap plus token bucket; use ``with limiter.slot():`` around each request."""

    def __init__(self, max_concurrency: int, requests_per_second: float):
        self.max_concurrency = max_concurrency
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._bucket = TokenBucket(requests_per_second)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._slots:
            self._bucket.acquire()
            yield


_limiters: Dict[Tuple[int, float], RequestLimiter] = {}
_limiters_lock = threading.Lock()


def process_limiter(max_concurrency: int, requests_per_second: float) -> RequestLimiter:
    """The process-wide limiter for these limits."""
    key = (max_concurrency, float(requests_per_second))
    with _limiters_lock:
        if key not in _limiters:
            _limiters[key] = RequestLimiter(max_concurrency, requests_per_second)
        return _limiters[key]
