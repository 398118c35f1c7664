"""Beam wrapper of ``earth_engine``: TileRequest -> TilePixels, with a 'dead_letter' output.

Requests are grouped by the request block the planner packed them into (GroupByKey; requests the planner
did not pack are grouped by coarse lattice cells and packed in the DoFn), blocks are batched so that one DoFn call
keeps up to ``max_concurrency`` requests in flight, and every request comes out either as
``TilePixels`` on the main output or as a ``DeadLetter``; nothing per-tile raises out.
"""
from __future__ import annotations

import logging
from typing import Iterable, List

import apache_beam as beam
from apache_beam.metrics import Metrics

import earth_engine
from earth_engine.fetch import STAGE
from tiles.records import DeadLetter, TilePixels, TileRequest

DEAD_LETTER = "dead_letter"
PIXELS = "pixels"
METRICS_NAMESPACE = "earth_engine"
_LOG = logging.getLogger(__name__)


class _FetchBlocksDoFn(beam.DoFn):
    """Fetches a batch of request blocks (each a list of TileRequests)."""

    def __init__(self, s2: earth_engine.S2Settings, ee_settings: earth_engine.EESettings):
        self._s2 = s2
        self._ee_settings = ee_settings
        self._latency = Metrics.distribution(METRICS_NAMESPACE, "request_latency_ms")

    def setup(self) -> None:
        earth_engine.initialize(self._ee_settings)
        self._metrics = earth_engine.FetchMetrics()
        self._fetcher = earth_engine.Fetcher(self._s2, self._metrics)

    def process(self, blocks: List[Iterable[TileRequest]]):
        requests = [request for block in blocks for request in block]
        try:
            results = self._fetcher.fetch(requests)
        except Exception as exc:  # noqa: BLE001 - a bug or an unexpected client failure: dead-letter all
            _LOG.exception("fetch of %d tile requests failed unexpectedly", len(requests))
            results = [DeadLetter.for_request(r, STAGE, exc) for r in requests]
        finally:
            self._publish_metrics()
        for result in results:
            if isinstance(result, TilePixels):
                yield result
            else:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, result)

    def _publish_metrics(self) -> None:
        # Beam Metrics count only in the DoFn's thread, so the request threads' counts are moved here.
        counts, latencies = self._metrics.drain()
        for name, value in counts.items():
            Metrics.counter(METRICS_NAMESPACE, name).inc(value)
        for ms in latencies:
            self._latency.update(ms)


class FetchTiles(beam.PTransform):
    """PCollection[TileRequest] -> tagged result: main ``TilePixels``, ``'dead_letter'`` DeadLetter.

    Args:
        s2: What to fetch and how (collection, bands, cloud filter and mask, composite, request size, concurrency).
        ee_settings: How each worker connects to Earth Engine (project, credentials, endpoint).
    """

    def __init__(self, s2: earth_engine.S2Settings, ee_settings: earth_engine.EESettings):
        super().__init__()
        self._s2 = s2
        self._ee_settings = ee_settings

    def expand(self, requests):
        s2 = self._s2
        # Fixed-size batches: each DoFn call keeps the concurrency cap busy (BatchElements' adaptive
        # sizing would start at one block per call, i.e. one request in flight).
        batch = 2 * s2.concurrency
        return (requests
                | "KeyByBlock" >> beam.Map(lambda r: (earth_engine.group_key(r), r))
                | "GroupBlocks" >> beam.GroupByKey()
                | "Blocks" >> beam.MapTuple(lambda _, rs: list(rs))
                | "BatchBlocks" >> beam.BatchElements(min_batch_size=batch, max_batch_size=batch)
                | "FetchPixels" >> beam.ParDo(_FetchBlocksDoFn(s2, self._ee_settings)).with_outputs(
                    DEAD_LETTER, main=PIXELS))
