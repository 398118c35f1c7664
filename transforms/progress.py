"""Progress reporting: Beam metrics plus a periodic log line (done / failed / remaining, tiles/s, ETA).

The counters are Beam metrics (aggregated by the runner, visible in the Dataflow UI and in
`result.metrics()`); the log line is per worker process, from the counts that process has seen.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

LOGGER = logging.getLogger("dynamicvis.progress")
NAMESPACE = "dynamicvis"
DONE = "tiles_done"
FAILED = "tiles_failed"
SKIPPED = "tiles_skipped_existing"
PLANNED = "tiles_planned"


def format_progress(done: int, failed: int, total: Optional[int], elapsed_s: float) -> str:
    rate = (done + failed) / elapsed_s if elapsed_s > 0 else 0.0
    if total is None:
        return f"progress: {done} done, {failed} failed, {rate:.2f} tiles/s"
    remaining = max(total - done - failed, 0)
    eta = f"{remaining / rate:.0f}s" if rate > 0 else "unknown"
    return (f"progress: {done} done, {failed} failed, {remaining} remaining of {total}, "
            f"{rate:.2f} tiles/s, ETA {eta}")


class _Tally:
    """Per-process counts shared by the DoFn instances of this process (one log line, not one per thread)."""

    lock = threading.Lock()
    done = 0
    failed = 0
    started: Optional[float] = None
    last_log = 0.0


class CountProgress(beam.DoFn):
    """Pass-through that counts elements as done (rows) or failed (dead letters) and logs periodically."""

    def __init__(self, counter: str, total: Optional[int] = None, interval_s: float = 30.0) -> None:
        if counter not in (DONE, FAILED, SKIPPED, PLANNED):
            raise ValueError(f"unknown progress counter {counter!r}")
        self._name = counter
        self._total = total
        self._interval_s = interval_s

    def setup(self) -> None:
        self._counter = Metrics.counter(NAMESPACE, self._name)

    def process(self, element):
        self._counter.inc()
        if self._name in (DONE, FAILED):
            self._tally()
        yield element

    def _tally(self) -> None:
        now = time.monotonic()
        with _Tally.lock:
            if _Tally.started is None:
                _Tally.started = now
                _Tally.last_log = now
            if self._name == DONE:
                _Tally.done += 1
            else:
                _Tally.failed += 1
            if now - _Tally.last_log < self._interval_s:
                return
            _Tally.last_log = now
            line = format_progress(_Tally.done, _Tally.failed, self._total, now - _Tally.started)
        LOGGER.info(line)


def query_counters(result) -> dict:
    """Committed (or attempted) values of our counters from a PipelineResult; missing ones are 0."""
    from apache_beam.metrics.metric import MetricsFilter

    values = {name: 0 for name in (DONE, FAILED, SKIPPED, PLANNED)}
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception:  # pylint: disable=broad-except  # some runners do not report metrics
        return values
    for counter in counters:
        name = counter.key.metric.name
        if name in values:
            value = counter.committed if counter.committed is not None else counter.attempted
            values[name] += int(value or 0)
    return values
