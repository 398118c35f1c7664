"""Progress reporting: Beam metrics plus, per process, a progress bar or a periodic log line.

The counters are Beam metrics (aggregated by the runner, visible in the Dataflow UI and in
`result.metrics()`). Each process also shows the counts it has seen: where its stderr is a terminal
(DirectRunner from a shell) as a progress bar redrawn in place (done / failed / skipped of the planned
tiles, tiles/s, ETA), elsewhere (Dataflow workers, CI, logs to a file) as a log line every `interval_s`.
"""
from __future__ import annotations

import logging
import sys
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


def format_progress(done: int, failed: int, total: Optional[int], elapsed_s: float, skipped: int = 0) -> str:
    rate = (done + failed) / elapsed_s if elapsed_s > 0 else 0.0
    counts = f"{done} done, {failed} failed" + (f", {skipped} skipped" if skipped else "")
    if total is None:
        return f"progress: {counts}, {rate:.2f} tiles/s"
    remaining = max(total - done - failed - skipped, 0)
    eta = f"{remaining / rate:.0f}s" if rate > 0 else "unknown"
    return f"progress: {counts}, {remaining} remaining of {total}, {rate:.2f} tiles/s, ETA {eta}"


BAR_WIDTH = 28
BAR_REDRAW_S = 0.2


def format_bar(done: int, failed: int, skipped: int, total: Optional[int], elapsed_s: float) -> str:
    """One terminal line: `[#####-----] 12/40 tiles  10 done  1 failed  1 skipped  0.80 tiles/s  ETA 35s`."""
    finished = done + failed + skipped
    rate = (done + failed) / elapsed_s if elapsed_s > 0 else 0.0
    if total:
        filled = int(BAR_WIDTH * min(finished / total, 1.0))
        remaining = max(total - finished, 0)
        eta = "0s" if not remaining else (f"{remaining / rate:.0f}s" if rate > 0 else "?")
        head = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {finished}/{total} tiles"
    else:
        head, eta = f"{finished} tiles", "?"
    return f"{head}  {done} done  {failed} failed  {skipped} skipped  {rate:.2f} tiles/s  ETA {eta}"


class _Tally:
    """Per-process counts shared by the DoFn instances of this process (one bar or log line, not one per
    thread)."""

    lock = threading.Lock()
    done = 0
    failed = 0
    skipped = 0
    started: Optional[float] = None
    last_log = 0.0
    bar_open = False  # a bar line is on the terminal without its newline yet


def start_run() -> None:
    """Zero this process's counts (a launcher running several pipelines one after another)."""
    with _Tally.lock:
        _Tally.done = _Tally.failed = _Tally.skipped = 0
        _Tally.started = None
        _Tally.last_log = 0.0
        _Tally.bar_open = False


def end_bar(stream=None) -> None:
    """Finish the bar's line, if this process drew one (so what is printed next starts on a new line)."""
    with _Tally.lock:
        if _Tally.bar_open:
            (stream or sys.stderr).write("\n")
            (stream or sys.stderr).flush()
            _Tally.bar_open = False


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class CountProgress(beam.DoFn):
    """Pass-through that counts elements as done (rows) or failed (dead letters) and logs periodically.

    Args:
        counter: One of DONE, FAILED, SKIPPED, PLANNED.
        total: Planned tiles, for a percentage and an ETA; default unknown.
        interval_s: Seconds between log lines (default 30).

    Raises:
        ValueError: An unknown counter.
    """

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
        if self._name in (DONE, FAILED, SKIPPED):
            self._tally()
        yield element

    def _tally(self) -> None:
        now = time.monotonic()
        stream = sys.stderr
        bar = _is_terminal(stream)
        with _Tally.lock:
            if _Tally.started is None:
                _Tally.started = now
                _Tally.last_log = now
            if self._name == DONE:
                _Tally.done += 1
            elif self._name == FAILED:
                _Tally.failed += 1
            else:
                _Tally.skipped += 1
            if bar:
                finished = _Tally.done + _Tally.failed + _Tally.skipped
                last = self._total is not None and finished >= self._total
                if last or now - _Tally.last_log >= BAR_REDRAW_S or not _Tally.bar_open:
                    _Tally.last_log = now
                    line = format_bar(_Tally.done, _Tally.failed, _Tally.skipped, self._total,
                                      now - _Tally.started)
                    stream.write(f"\r{line}\x1b[K" + ("\n" if last else ""))
                    stream.flush()
                    _Tally.bar_open = not last
                return
            if self._name == SKIPPED or now - _Tally.last_log < self._interval_s:
                return
            _Tally.last_log = now
            line = format_progress(_Tally.done, _Tally.failed, self._total, now - _Tally.started, _Tally.skipped)
        LOGGER.info(line)


def query_counters(result) -> dict:
    """Committed (or attempted) values of our counters from a PipelineResult; missing ones are 0."""
    from apache_beam.metrics.metric import MetricsFilter

    values = {name: 0 for name in (DONE, FAILED, SKIPPED, PLANNED)}
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception:  # noqa: BLE001  # some runners do not report metrics
        return values
    for counter in counters:
        name = counter.key.metric.name
        if name in values:
            value = counter.committed if counter.committed is not None else counter.attempted
            values[name] += int(value or 0)
    return values
