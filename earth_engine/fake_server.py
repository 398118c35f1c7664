"""A fake Earth Engine REST server on 127.0.0.1 for the real ``earthengine-api`` client.

It ships with the package because the offline quickstart (``run_local.sh`` -> ``scripts/demo_server.py``)
serves it; the tests, benchmarks and chaos runs use the same server (``tests/fakes/ee_server.py`` re-exports it).
Nothing in the pipeline imports it.

It serves the discovery document and algorithm list bundled in earthengine-api's own tests folder
(so ``ee.Initialize(url=server.url, ...)`` works offline) and answers ``image:computePixels`` with
deterministic synthetic pixels whose values encode their own ground coordinates
(see :func:`synthetic_pixels`), so a test can check where every pixel came from.

Every computePixels request is recorded (:class:`ComputePixelsCall`), requests in flight are counted
(``max_in_flight``), and replies can be scripted: per-request rules (by call index, footprint, ...)
and seeded fault rates (429, 500, stall, malformed) for chaos tests and benchmarks. A latency model
(``base_s + per_mb_s * MB``) makes benchmarks behave like the real service. Like Earth Engine, it refuses
(400) a grid over 32,768 px a side or a payload over 48 MiB counted with one mask byte per band.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import http.server
import io
import json
import pathlib
import random
import re
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np

PROJECT = "test-project"
SCENE_COUNT_BAND = "SCENE_COUNT"
# Earth Engine's computePixels limits: payload counted as sum over bands of (bytes per value + 1 mask byte)
# x pixels, at most 48 MiB; at most 32,768 pixels a side.
MAX_REQUEST_BYTES = 48 * 1024 * 1024
MAX_GRID_SIDE_PX = 32768
BAND_DTYPE = np.dtype(np.uint16)  # every band of the pipeline's expression is cast to uint16
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _ee_tests_dir() -> pathlib.Path:
    import ee  # only for the location of its bundled test documents

    return pathlib.Path(ee.__file__).parent / "tests"


class Fault(enum.Enum):
    HTTP_400 = 400
    HTTP_429 = 429
    HTTP_500 = 500
    HTTP_503 = 503
    STALL = "stall"          # sleep ``stall_s`` before answering (longer than the client deadline)
    MALFORMED = "malformed"  # 200 with a body that is not an NPY array


_FAULT_MESSAGES = {
    Fault.HTTP_400: "Image.select: Invalid argument (scripted by the fake server).",
    Fault.HTTP_429: "Too Many Requests: Request was rejected because the request rate or "
                    "concurrency limit was exceeded.",
    Fault.HTTP_500: "An internal error has occurred (scripted by the fake server).",
    Fault.HTTP_503: "The service is currently unavailable (scripted by the fake server).",
}


@dataclasses.dataclass(frozen=True)
class FaultRates:
    """Seeded random faults applied to computePixels requests that no rule answered."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_stall: float = 0.0
    malformed_calls: Tuple[int, ...] = ()  # call indices answered with a malformed body
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """Server-side time per successful request: ``base_s + per_mb_s * response MB``."""

    base_s: float = 0.0
    per_mb_s: float = 0.0

    def seconds(self, nbytes: int) -> float:
        return self.base_s + self.per_mb_s * nbytes / 1e6


@dataclasses.dataclass
class ComputePixelsCall:
    """One computePixels request as the server received it, and how it was answered."""

    index: int
    body: dict
    crs: str
    transform: Tuple[float, float, float, float, float, float]  # EE affine order
    width: int
    height: int
    dates: Tuple[str, ...]  # ISO dates found in the expression (the filterDate window)
    answer: object = None   # Fault or 200
    started: float = 0.0    # time.monotonic() when the request arrived
    finished: float = 0.0   # ... and when its reply was sent

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the requested grid, for north-up grids."""
        sx, _, tx, _, sy, ty = self.transform
        return tx, ty + sy * self.height, tx + sx * self.width, ty

    @property
    def window_start(self) -> Optional[dt.date]:
        return dt.date.fromisoformat(self.dates[0]) if self.dates else None

    def covers(self, x: float, y: float) -> bool:
        xmin, ymin, xmax, ymax = self.bounds
        return xmin <= x < xmax and ymin <= y < ymax


@dataclasses.dataclass
class _Rule:
    predicate: Callable[[ComputePixelsCall], bool]
    fault: Fault
    times: Optional[int]  # None = forever


@dataclasses.dataclass(frozen=True)
class _EmptyArea:
    crs: str
    bounds: Tuple[float, float, float, float]
    window_start: Optional[dt.date]


def synthetic_value_x(easting: np.ndarray) -> np.ndarray:
    """B4 of the synthetic image: the pixel centre's easting in 10 m steps, mod 9999, plus 1 (never 0)."""
    return (1 + (np.floor(easting).astype(np.int64) // 10) % 9999).astype(np.uint16)


def synthetic_value_y(northing: np.ndarray) -> np.ndarray:
    """B3 of the synthetic image: the pixel centre's northing in 10 m steps, mod 9999, plus 1."""
    return (1 + (np.floor(northing).astype(np.int64) // 10) % 9999).astype(np.uint16)


def synthetic_value_zone(crs: str, window_start: Optional[dt.date]) -> int:
    """B2 of the synthetic image: a constant that encodes the CRS and the window start."""
    epsg = int(crs.split(":")[1])
    day = window_start.toordinal() if window_start else 0
    return 1 + (epsg * 31 + day) % 9999


def pixel_centres(transform: Sequence[float], width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """Eastings and northings of the pixel centres, broadcastable to (height, width)."""
    sx, shx, tx, shy, sy, ty = transform
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    if shx == 0 and shy == 0:  # north-up: 1-D is enough (cheap for big requests)
        return (tx + sx * cols)[None, :], (ty + sy * rows)[:, None]
    return (tx + sx * cols[None, :] + shx * rows[:, None], ty + shy * cols[None, :] + sy * rows[:, None])


def synthetic_pixels(crs: str, transform: Sequence[float], width: int, height: int,
                     window_start: Optional[dt.date], n_scenes: int = 5) -> Dict[str, np.ndarray]:
    """The fake image on a grid: band name -> (height, width) array. Tests use it as ground truth."""
    easting, northing = pixel_centres(transform, width, height)
    shape = (height, width)
    return {
        "B4": np.broadcast_to(synthetic_value_x(easting), shape),
        "B3": np.broadcast_to(synthetic_value_y(northing), shape),
        "B2": np.broadcast_to(np.uint16(synthetic_value_zone(crs, window_start)), shape),
        SCENE_COUNT_BAND: np.broadcast_to(np.uint16(n_scenes), shape),
    }


class FakeEarthEngine:
    """The fake server. Use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self, *, faults: FaultRates = FaultRates(), latency: LatencyModel = LatencyModel(),
                 stall_s: float = 5.0, n_scenes: int = 5, host: str = "127.0.0.1", port: int = 0):
        self.faults = self._initial_faults = faults
        self.latency = self._initial_latency = latency
        self.stall_s = stall_s
        self.n_scenes = n_scenes
        self._lock = threading.Lock()
        self._rng = random.Random(faults.seed)
        self._rules: List[_Rule] = []
        self._empty_areas: List[_EmptyArea] = []
        self._stop_stalls = threading.Event()
        self.calls: List[ComputePixelsCall] = []
        self.other_requests: List[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        tests_dir = _ee_tests_dir()
        self._discovery = (tests_dir / "cloud_api_discovery_document.json").read_text().replace(
            "v1alpha", "v1").encode()
        self._algorithms = (tests_dir / "algorithms.json").read_bytes()
        self._httpd = http.server.ThreadingHTTPServer((host, port), self._make_handler())
        self._httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> "FakeEarthEngine":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-ee", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop_stalls.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeEarthEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- scripting
    def reset(self, *, faults: Optional[FaultRates] = None, latency: Optional[LatencyModel] = None) -> None:
        """Forget recorded calls, rules and empty areas (between tests sharing one server); fault
        rates and latency go back to the constructor's unless given here.

        Stalled requests are released first, so they do not count as in flight in the next test."""
        self._stop_stalls.set()
        deadline = time.monotonic() + 5.0
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop_stalls = threading.Event()
        with self._lock:
            self.calls.clear()
            self._rules.clear()
            self._empty_areas.clear()
            self.max_in_flight = 0
            self.faults = faults if faults is not None else self._initial_faults
            self.latency = latency if latency is not None else self._initial_latency
            self._rng = random.Random(self.faults.seed)

    def add_rule(self, predicate: Callable[[ComputePixelsCall], bool], fault: Fault,
                 times: Optional[int] = None) -> None:
        """Answer matching computePixels calls with ``fault`` (``times`` times, or forever)."""
        with self._lock:
            self._rules.append(_Rule(predicate, fault, times))

    def fail_calls(self, indices: Sequence[int], fault: Fault) -> None:
        """Answer the computePixels calls with these 0-based indices with ``fault``."""
        wanted = frozenset(indices)
        self.add_rule(lambda call: call.index in wanted, fault)

    def fail_where(self, x: float, y: float, fault: Fault, times: Optional[int] = None,
                   max_width: Optional[int] = None) -> None:
        """Answer calls whose footprint covers ground point (x, y) (and, optionally, that are at most
        ``max_width`` pixels wide: e.g. fail only requests of several tiles) with ``fault``."""
        self.add_rule(lambda call: call.covers(x, y) and (max_width is None or call.width <= max_width),
                      fault, times)

    def add_empty_area(self, crs: str, bounds: Tuple[float, float, float, float],
                       window_start: Optional[dt.date] = None) -> None:
        """No scenes at pixels whose centres fall in ``bounds`` (for that window start, or any)."""
        with self._lock:
            box = cast(Tuple[float, float, float, float], tuple(bounds))
            self._empty_areas.append(_EmptyArea(crs, box, window_start))

    # ----------------------------------------------------------------- answering
    def _choose_answer(self, call: ComputePixelsCall) -> object:
        with self._lock:
            for rule in self._rules:
                if rule.times != 0 and rule.predicate(call):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule.fault
            if call.index in self.faults.malformed_calls:
                return Fault.MALFORMED
            draw = self._rng.random()
            f = self.faults
            if draw < f.rate_429:
                return Fault.HTTP_429
            if draw < f.rate_429 + f.rate_500:
                return Fault.HTTP_500
            if draw < f.rate_429 + f.rate_500 + f.rate_stall:
                return Fault.STALL
            return 200

    def _render(self, call: ComputePixelsCall, band_ids: Sequence[str]) -> bytes:
        start = call.window_start
        bands = synthetic_pixels(call.crs, call.transform, call.width, call.height, start, self.n_scenes)
        unknown = [b for b in band_ids if b not in bands]
        if unknown:
            raise _BadRequest(f"Image.select: Pattern '{unknown[0]}' did not match any bands.")
        dtype = np.dtype([(b, bands[b].dtype) for b in band_ids])
        out = np.empty((call.height, call.width), dtype)
        for b in band_ids:
            out[b] = bands[b]
        with self._lock:
            areas = [a for a in self._empty_areas if a.crs == call.crs
                     and (a.window_start is None or a.window_start == start)]
        if areas:
            easting, northing = pixel_centres(call.transform, call.width, call.height)
            for area in areas:
                xmin, ymin, xmax, ymax = area.bounds
                out[(easting >= xmin) & (easting < xmax) & (northing >= ymin) & (northing < ymax)] = 0
        buf = io.BytesIO()
        np.save(buf, out, allow_pickle=False)
        return buf.getvalue()

    def _parse_call(self, body: dict) -> ComputePixelsCall:
        grid = body.get("grid") or {}
        dims = grid.get("dimensions") or {}
        aff = grid.get("affineTransform") or {}
        try:
            transform = cast(Tuple[float, float, float, float, float, float],
                             tuple(float(aff.get(k, 0.0)) for k in
                                   ("scaleX", "shearX", "translateX", "shearY", "scaleY", "translateY")))
            width, height = int(dims["width"]), int(dims["height"])
            crs = grid["crsCode"]
        except (KeyError, TypeError, ValueError) as exc:
            raise _BadRequest(f"Invalid grid {grid!r}: {exc}") from None
        dates = tuple(sorted(set(_DATE_RE.findall(json.dumps(body.get("expression"))))))
        with self._lock:
            index = len(self.calls)
            call = ComputePixelsCall(index, body, crs, transform, width, height, dates,
                                     started=time.monotonic())
            self.calls.append(call)
        return call

    def _compute_pixels(self, raw_body: bytes) -> Tuple[int, str, bytes, Optional[ComputePixelsCall]]:
        body = json.loads(raw_body)
        call = self._parse_call(body)
        return (*self._answer(call, body), call)

    @staticmethod
    def _check_size(call: ComputePixelsCall, band_ids: Sequence[str]) -> None:
        """Refuse what Earth Engine refuses, with messages of the same shape."""
        if call.width > MAX_GRID_SIDE_PX or call.height > MAX_GRID_SIDE_PX:
            raise _BadRequest(f"Grid dimensions ({call.width}x{call.height}) must be less than or equal to "
                              f"{MAX_GRID_SIDE_PX} pixels in each dimension.")
        if call.width < 1 or call.height < 1:
            raise _BadRequest(f"Grid dimensions ({call.width}x{call.height}) must be positive.")
        size = call.width * call.height * len(band_ids) * (BAND_DTYPE.itemsize + 1)
        if size > MAX_REQUEST_BYTES:
            raise _BadRequest(f"Total request size ({size} bytes) must be less than or equal to "
                              f"{MAX_REQUEST_BYTES} bytes.")

    def _answer(self, call: ComputePixelsCall, body: dict) -> Tuple[int, str, bytes]:
        try:
            self._check_size(call, body.get("bandIds") or ["B4", "B3", "B2"])
        except _BadRequest:
            call.answer = 400
            raise
        answer = self._choose_answer(call)
        call.answer = answer
        if answer == Fault.STALL:
            self._stop_stalls.wait(self.stall_s)  # woken early by reset() or stop()
            answer = 200
        if answer == Fault.MALFORMED:
            return 200, "application/octet-stream", b"\x93NUMPY this is not an array"
        if isinstance(answer, Fault):
            return answer.value, "application/json", _error_json(answer.value, _FAULT_MESSAGES[answer])
        payload = self._render(call, body.get("bandIds") or ["B4", "B3", "B2"])
        delay = self.latency.seconds(len(payload))
        if delay > 0:
            time.sleep(delay)
        return 200, "application/octet-stream", payload

    def _make_handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _reply(self, status: int, content_type: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (deadline) before we answered

            def do_GET(self) -> None:
                server.other_requests.append(self.path)
                if self.path.startswith("/$discovery/rest"):
                    self._reply(200, "application/json", server._discovery)
                elif re.match(rf"^/v1/projects/{PROJECT}/algorithms", self.path):
                    self._reply(200, "application/json", server._algorithms)
                else:
                    self._reply(404, "application/json", _error_json(404, f"Not found: {self.path}"))

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not re.match(r"^/v1/projects/[^/]+/image:computePixels", self.path):
                    server.other_requests.append(self.path)
                    self._reply(404, "application/json", _error_json(404, f"Not found: {self.path}"))
                    return
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                call = None
                try:
                    status, content_type, payload, call = server._compute_pixels(raw)
                except _BadRequest as exc:
                    status, content_type, payload = 400, "application/json", _error_json(400, str(exc))
                finally:
                    with server._lock:
                        server.in_flight -= 1
                self._reply(status, content_type, payload)
                if call is not None:
                    call.finished = time.monotonic()

        return Handler


class _BadRequest(Exception):
    pass


def _error_json(code: int, message: str) -> bytes:
    status = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
              500: "INTERNAL", 503: "UNAVAILABLE"}.get(code, "UNKNOWN")
    return json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()


def initialize_client(url: str, project: str = PROJECT) -> None:
    """Initialise the real ``ee`` client against a fake server with anonymous credentials."""
    import ee
    import google.auth.credentials

    ee.Initialize(credentials=google.auth.credentials.AnonymousCredentials(), project=project, url=url)


__all__ = ["FakeEarthEngine", "Fault", "FaultRates", "LatencyModel", "ComputePixelsCall", "PROJECT",
           "SCENE_COUNT_BAND", "synthetic_pixels", "synthetic_value_x", "synthetic_value_y",
           "synthetic_value_zone", "initialize_client"]
