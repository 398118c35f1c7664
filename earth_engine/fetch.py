"""Fetching tile and chip pixels with computePixels: packed blocks, limits, retries, fallback, stitching,
dead letters."""
from __future__ import annotations

import concurrent.futures
import random
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

import numpy as np

from earth_engine import metrics as m
from earth_engine.client import initialize
from earth_engine.errors import (ErrorKind, MalformedResponseError, NoScenesError, TooFewValidPixelsError,
                                 classify, error_class, http_status)
from earth_engine.image import s2_image
from earth_engine.quota import process_limiter
from earth_engine.settings import SCENE_COUNT_BAND, EESettings, S2Settings
from earth_engine.packing import Block, array_window, intersection, pack
from tiles.records import DeadLetter, TilePixels, TileRequest

STAGE = "fetch"
Result = Union[TilePixels, DeadLetter]
Outcome = Tuple[Optional[np.ndarray], Optional[BaseException], int]  # (pixels, error, attempts)

sleep: Callable[[float], None] = time.sleep  # the retry sleep; tests patch this, not the client


def backoff_seconds(attempt: int, s2: S2Settings, rng: random.Random) -> float:
    """Exponential backoff with jitter before retry number ``attempt`` (1-based): half the capped
    exponential delay plus a random share of the other half."""
    ceiling = min(s2.backoff_max_s, s2.backoff_base_s * 2 ** (attempt - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class Fetcher:
    """Fetches lists of tile requests; one per process is enough (it holds no per-call state)."""

    def __init__(self, s2: S2Settings, metrics: Optional[m.FetchMetrics] = None,
                 rng: Optional[random.Random] = None):
        self.s2 = s2
        self.metrics = metrics or m.FetchMetrics()
        self.limiter = process_limiter(s2.concurrency, s2.rate)
        self._rng = rng or random.Random()

    # ------------------------------------------------------------------ public
    def fetch(self, requests: Sequence[TileRequest]) -> List[Result]:
        """One result (pixels or dead letter) per request, in input order. Never raises per tile.

        Requests are packed into blocks (``packing.pack``); a failed block of several tiles is retried
        tile by tile; a tile fetched in pieces is stitched from them and fails if any piece failed."""
        blocks = pack(requests, self.s2)
        outcomes: Dict[int, List[Tuple[Block, Outcome]]] = {}
        notes: Dict[int, str] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.s2.concurrency) as pool:
            retry: List[Tuple[Block, int, BaseException]] = []
            for block, outcome in zip(blocks, pool.map(self._attempt, blocks)):
                _, error, attempts = outcome
                if error is not None and block.n_boxes > 1 and classify(error) is not ErrorKind.NO_SCENES:
                    self.metrics.inc(m.SUPER_TILE_FALLBACKS)
                    retry += [(single, attempts, error) for single in block.singles(self.s2)]
                else:
                    self._record(outcomes, block, outcome)
            singles = [single for single, _, _ in retry]
            for (single, prior, first_error), (pixels, error, attempts) in zip(
                    retry, pool.map(self._attempt, singles)):
                self._record(outcomes, single, (pixels, error, prior + attempts))
                for r in single.requests:
                    notes[id(r)] = f" (the request of several tiles failed first: {first_error})"
        results = {}
        for r in requests:
            if id(r) not in results and id(r) in outcomes:
                results[id(r)] = self._result(r, outcomes[id(r)], notes.get(id(r), ""))
        missing = [r for r in requests if id(r) not in results]
        if missing:  # a bug, never expected; still, no tile is dropped silently
            raise AssertionError(f"{len(missing)} tile requests got no result, e.g. {missing[0].key}")
        return [results[id(r)] for r in requests]

    @staticmethod
    def _record(outcomes: Dict[int, List[Tuple[Block, "Outcome"]]], block: Block, outcome: "Outcome") -> None:
        for r in block.requests:
            outcomes.setdefault(id(r), []).append((block, outcome))

    def _result(self, request: TileRequest, parts: List[Tuple[Block, "Outcome"]], note: str) -> Result:
        """Stitch the request's pixels from its block(s), or its dead letter."""
        attempts = max(outcome[2] for _, outcome in parts)
        for _block, (_, error, tries) in parts:
            if error is not None:
                self.metrics.inc(m.TILES_DEAD)
                return DeadLetter.for_request(request, STAGE, (str(error) or repr(error)) + note, tries,
                                              error_class=error_class(error))
        box = request.tile.pixel_box
        pieces = [(block, cast(np.ndarray, pixels)) for block, (pixels, _, _) in parts]  # no error: pixels
        if len(pieces) == 1 and pieces[0][0].box == box:
            cut = pieces[0][1]
        else:
            cut = np.zeros((box[3], box[2]), dtype=pieces[0][1].dtype)
            covered = 0
            for block, pixels in pieces:
                overlap = intersection(block.box, box)
                if overlap is None:
                    continue
                cut[array_window(box, overlap)] = pixels[array_window(block.box, overlap)]
                covered += overlap[2] * overlap[3]
            if covered != box[2] * box[3]:  # a bug, never expected
                raise AssertionError(f"pieces of {request.key} cover {covered} of {box[2] * box[3]} pixels")
        return self._tile_result(request, cut, attempts)

    # ------------------------------------------------------------------ one block
    def _attempt(self, block: Block) -> Outcome:
        """(pixels, None, attempts) or (None, last error, attempts) after bounded retries."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._request(block), None, attempt
            except Exception as exc:  # noqa: BLE001 - classified below, never lost
                self._count_error(exc)
                if classify(exc) not in (ErrorKind.RATE_LIMITED, ErrorKind.TRANSIENT) \
                        or attempt >= self.s2.max_attempts:
                    return None, exc, attempt
                self.metrics.inc(m.RETRIES)
                sleep(backoff_seconds(attempt, self.s2, self._rng))

    def _request(self, block: Block) -> np.ndarray:
        """One computePixels call for the block, validated."""
        import ee

        params = {
            "expression": s2_image(self.s2, block.crs, block.bounds, block.window),
            "fileFormat": "NUMPY_NDARRAY",
            "bandIds": list(self.s2.band_ids),
            "grid": block.grid(),
        }
        with self.limiter.slot():
            self.metrics.inc(m.REQUESTS)
            started = time.monotonic()
            try:
                pixels = ee.data.computePixels(params)
            except (ValueError, EOFError) as exc:  # np.load on a body that is not NPY
                raise MalformedResponseError(f"computePixels reply is not an NPY array: {exc}") from exc
            finally:
                self.metrics.latency(time.monotonic() - started)
        self._check_shape(block, pixels)
        self.metrics.inc(m.BYTES, int(pixels.nbytes))
        return pixels

    def _check_shape(self, block: Block, pixels: np.ndarray) -> None:
        names = getattr(getattr(pixels, "dtype", None), "names", None) or ()
        if missing := [b for b in self.s2.band_ids if b not in names]:
            raise MalformedResponseError(f"computePixels reply lacks bands {missing} (has {list(names)})")
        if pixels.shape != (block.height, block.width):
            raise MalformedResponseError(
                f"computePixels reply has shape {pixels.shape}, expected {(block.height, block.width)}")

    def _count_error(self, exc: BaseException) -> None:
        status = http_status(exc)
        if classify(exc) is ErrorKind.RATE_LIMITED:  # 429 included
            self.metrics.inc(m.RATE_LIMITED)
        elif status is not None and status >= 500:
            self.metrics.inc(m.SERVER_ERRORS)
        elif isinstance(exc, TimeoutError):
            self.metrics.inc(m.TIMEOUTS)

    # ------------------------------------------------------------------ per tile
    def _tile_result(self, request: TileRequest, cut: np.ndarray, attempts: int) -> Result:
        scene_count = cut[SCENE_COUNT_BAND]
        n_scenes = int(scene_count.max())
        valid_fraction = float((scene_count > 0).mean())
        if n_scenes == 0:
            error: Optional[Exception] = NoScenesError(
                f"no unmasked scene of {self.s2.collection} with CLOUDY_PIXEL_PERCENTAGE <= "
                f"{self.s2.cloudy_pct:g} between {request.window.start} and {request.window.end} "
                f"(end exclusive)")
        elif valid_fraction < self.s2.min_valid_fraction:
            error = TooFewValidPixelsError(
                f"valid pixel fraction {valid_fraction:.3f} < min_valid_fraction "
                f"{self.s2.min_valid_fraction:g}")
        else:
            error = None
        if error is not None:
            self.metrics.inc(m.TILES_DEAD)
            return DeadLetter.for_request(request, STAGE, error, attempts)
        chw = np.stack([cut[b] for b in self.s2.bands]).astype(np.uint16, copy=False)
        self.metrics.inc(m.TILES_OK)
        return TilePixels(request, np.ascontiguousarray(chw), valid_fraction, n_scenes)


def fetch_tiles(requests: Sequence[TileRequest], s2: S2Settings, ee_settings: EESettings,
                metrics: Optional[m.FetchMetrics] = None) -> List[Result]:
    """Pixels or a dead letter for every request, in input order (the card's Python API path)."""
    initialize(ee_settings)
    return Fetcher(s2, metrics).fetch(requests)
