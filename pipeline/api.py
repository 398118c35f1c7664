"""The adapter card's Python API: `get_embedding` / `get_embeddings_batch` for DynamicVis on Sentinel-2 RGB.

Same code as the pipeline, not a second implementation: pixels come from `earth_engine.Fetcher` and vectors
from `models.DynamicVisEmbedder`. A spatial spec becomes one fetched patch (see `tile_for`).

    emb = get_embedding("dynamicvis", spatial=PointBuffer(lon=121.5, lat=31.2, buffer_m=2048),
                        temporal=TemporalSpec.range("2022-06-01", "2022-09-01"), output=OutputSpec.pooled())
    emb.data  # (D,) float32; OutputSpec.grid(): xarray.DataArray 'embedding' (d, y, x); emb.meta: the card's keys

Errors are `SpecError` (a ValueError: the request), `ProviderError` and `ModelError` (RuntimeErrors: Earth
Engine, the model); see `pipeline.errors`. Earth Engine: `ee_settings=earth_engine.EESettings(...)`, else the
connection this process already initialised (`ee.Initialize(...)`), else Application Default Credentials.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import math
import numbers
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union, cast

import numpy as np

from pipeline.errors import ModelError, ProviderError, SpecError
from tiles.records import DeadLetter, Tile, TileRequest, TimeWindow

if TYPE_CHECKING:
    import tiles.records

LOGGER = logging.getLogger("dynamicvis")
MODEL_ID = "dynamicvis"
BACKENDS = ("auto", "gee")                       # 'auto' means Earth Engine, the only provider
S2_COLLECTION = "COPERNICUS/S2_SR_HARMONIZED"
S2_RGB_BANDS = ("B4", "B3", "B2")
DEFAULT_TEMPORAL_RANGE = ("2022-06-01", "2022-09-01")  # the adapter's window when `temporal` is omitted


@dataclasses.dataclass(frozen=True)
class PointBuffer:
    """A square patch centred on a point.

    Args:
        lon: Longitude of the centre, degrees in [-180, 180].
        lat: Latitude of the centre, degrees within the UTM latitudes [-80, 84].
        buffer_m: Half the side of the square, ground metres (> 0).
    """

    lon: float
    lat: float
    buffer_m: float


@dataclasses.dataclass(frozen=True)
class BBox:
    """A lon/lat box; the patch is the smallest pixel-snapped UTM rectangle that holds it.

    Args:
        minlon: West edge, degrees.
        minlat: South edge, degrees.
        maxlon: East edge, degrees (> minlon).
        maxlat: North edge, degrees (> minlat).
    """

    minlon: float
    minlat: float
    maxlon: float
    maxlat: float


@dataclasses.dataclass(frozen=True)
class TemporalSpec:
    """A time window [start, end) (end exclusive) for filtering and compositing; `mode` records how it was
    given ('range' or 'year'). Without `temporal`, the API uses `DEFAULT_TEMPORAL_RANGE`, as the adapter did.
    Build it with `TemporalSpec.range` or `TemporalSpec.year`.

    Raises:
        SpecError: `end` not after `start`, not dates, or a window ending before Sentinel-2 SR exists.
    """

    start: dt.date
    end: dt.date  # exclusive
    mode: str = "range"

    def __post_init__(self) -> None:
        from tiles.time_windows import S2_SR_HARMONIZED_START

        if self.mode not in ("range", "year"):
            raise SpecError(f"TemporalSpec mode {self.mode!r}: use TemporalSpec.range(start, end) or .year(y)")
        if not (isinstance(self.start, dt.date) and isinstance(self.end, dt.date)):
            raise SpecError(f"TemporalSpec needs dates, got start={self.start!r}, end={self.end!r}; "
                            "use TemporalSpec.range('YYYY-MM-DD', 'YYYY-MM-DD')")
        if self.end <= self.start:
            raise SpecError(f"TemporalSpec.range: end {self.end} must be after start {self.start} (end is "
                            f"exclusive: for one day use end={(self.start + dt.timedelta(days=1)).isoformat()!r})")
        if self.end <= S2_SR_HARMONIZED_START:
            raise SpecError(f"TemporalSpec [{self.start}, {self.end}) ends before Sentinel-2 surface reflectance "
                            f"is available ({S2_SR_HARMONIZED_START}); choose a window ending after that")

    @classmethod
    def range(cls, start: Union[str, dt.date], end: Union[str, dt.date]) -> "TemporalSpec":
        """[start, end) from ISO dates (end exclusive).

        Args:
            start: First day, 'YYYY-MM-DD' or a `datetime.date`.
            end: Day after the last, 'YYYY-MM-DD' or a `datetime.date`.

        Returns:
            The TemporalSpec, mode 'range'.

        Raises:
            SpecError: A date that does not parse, or `end <= start`.
        """
        from tiles.time_windows import parse_date

        def day(value, name: str) -> dt.date:
            if isinstance(value, dt.date):
                return value
            try:
                return parse_date(value, f"TemporalSpec.range {name}")
            except ValueError as error:
                raise SpecError(str(error)) from None

        return cls(day(start, "start"), day(end, "end"))

    @classmethod
    def year(cls, year: int) -> "TemporalSpec":
        """The calendar year [YYYY-01-01, YYYY+1-01-01).

        Args:
            year: The year, an int such as 2022.

        Returns:
            The TemporalSpec, mode 'year'.

        Raises:
            SpecError: Not an integer year in [1, 9998].
        """
        if isinstance(year, bool) or not isinstance(year, (int, np.integer)) or not 1 <= year <= 9998:
            raise SpecError(f"TemporalSpec.year({year!r}): expected a year such as 2022")
        return cls(dt.date(int(year), 1, 1), dt.date(int(year) + 1, 1, 1), "year")

    @classmethod
    def default(cls) -> "TemporalSpec":
        return cls.range(*DEFAULT_TEMPORAL_RANGE)

    @property
    def window(self) -> TimeWindow:
        return TimeWindow(self.start, self.end)

    def to_meta(self) -> Dict[str, Any]:
        """As the adapter recorded it: the window normalised to a range."""
        return {"mode": "range", "start": self.start.isoformat(), "end": self.end.isoformat()}

    def midpoint(self) -> str:
        return (self.start + (self.end - self.start) / 2).isoformat()


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """What the API returns: one pooled vector or the feature-map grid. Build it with `OutputSpec.pooled()` or
    `OutputSpec.grid()`.

    Raises:
        SpecError: An unknown mode or pooling.
    """

    mode: str = "pooled"  # 'pooled' | 'grid'
    pooling: str = "mean"  # for pooled: 'mean' | 'max' (recorded as 'featmap_mean' | 'featmap_max')

    def __post_init__(self) -> None:
        if self.mode not in ("pooled", "grid"):
            raise SpecError(f"OutputSpec mode {self.mode!r}: use OutputSpec.pooled() or OutputSpec.grid()")
        from models.config import POOLINGS

        if self.pooling not in POOLINGS:
            raise SpecError(f"OutputSpec.pooled({self.pooling!r}): pooling is 'mean' or 'max'")

    @classmethod
    def pooled(cls, pooling: str = "mean") -> "OutputSpec":
        """One (D,) vector per patch.

        Args:
            pooling: 'mean' (default) or 'max' over the feature map.

        Returns:
            The OutputSpec, mode 'pooled'.
        """
        return cls("pooled", pooling)

    @classmethod
    def grid(cls) -> "OutputSpec":
        """The feature map itself: an `xarray.DataArray` (d, y, x) per patch.

        Returns:
            The OutputSpec, mode 'grid'.
        """
        return cls("grid", "mean")


@dataclasses.dataclass(frozen=True)
class SensorSpec:
    """The card's sensor spec; its defaults are the only input the model serves: S2 SR harmonized, B4/B3/B2.
    `scale_m`, `cloudy_pct` and `composite` may change; another collection or other bands are refused.

    Args:
        collection: Must be 'COPERNICUS/S2_SR_HARMONIZED' (the default).
        bands: Must be ('B4', 'B3', 'B2') (the default), in that order.
        scale_m: Metres per fetched pixel (> 0, default 10).
        cloudy_pct: Scenes with more cloud than this percentage are left out (0..100, default 30).
        composite: How scenes are combined, one of `earth_engine.settings.COMPOSITES` (default 'median').

    Raises:
        SpecError: Another collection or other bands, or a value out of range.
    """

    collection: str = S2_COLLECTION
    bands: Tuple[str, ...] = S2_RGB_BANDS
    scale_m: float = 10.0
    cloudy_pct: float = 30.0
    composite: str = "median"

    def __post_init__(self) -> None:
        from earth_engine.settings import COMPOSITES

        if self.collection != S2_COLLECTION:
            raise SpecError(f"SensorSpec collection {self.collection!r} cannot be served: DynamicVis here embeds "
                            f"{S2_COLLECTION} only; omit collection or pass {S2_COLLECTION!r}")
        bands = tuple(self.bands) if isinstance(self.bands, (list, tuple)) else (self.bands,)
        if bands != S2_RGB_BANDS:
            raise SpecError(f"SensorSpec bands {bands} cannot be served: the model takes RGB as "
                            f"{S2_RGB_BANDS} in that order; omit bands or pass {S2_RGB_BANDS}")
        object.__setattr__(self, "bands", bands)
        if not _finite(self.scale_m) or self.scale_m <= 0:
            raise SpecError(f"SensorSpec scale_m={self.scale_m!r}: metres per pixel, a positive number (10 is "
                            "Sentinel-2's RGB resolution)")
        if not _finite(self.cloudy_pct) or not 0 <= self.cloudy_pct <= 100:
            raise SpecError(f"SensorSpec cloudy_pct={self.cloudy_pct!r}: a percentage in [0, 100]")
        if self.composite not in COMPOSITES:
            raise SpecError(f"SensorSpec composite={self.composite!r}: use one of {COMPOSITES}")

    def to_meta(self) -> Dict[str, Any]:
        return {"collection": self.collection, "bands": list(self.bands), "scale_m": self.scale_m,
                "cloudy_pct": self.cloudy_pct, "composite": self.composite}


@dataclasses.dataclass
class Embedding:
    """One result of the API.

    Args:
        data: A (D,) float32 `np.ndarray` for `OutputSpec.pooled()`; for `OutputSpec.grid()` an
            `xarray.DataArray` named 'embedding' with dims (d, y, x).
        meta: The card's metadata keys (model, sensor, temporal, checkpoint, feature-map layout) and ours
            (tile id, CRS, transform, n_scenes, valid_fraction, ...).
    """

    data: Any  # np.ndarray (D,) for pooled, xarray.DataArray (D, H, W) for grid
    meta: Dict[str, Any]


Spatial = Union[PointBuffer, BBox]


def _chip_meta(chip: Any, image_size: Optional[int]) -> Dict[str, Any]:
    """The chip's pixel size and the effective ground resolution once resized to the model input (a BBox is
    stretched to the square input, as the adapter did): metres per input pixel along x and y."""
    if chip is None or not image_size:
        return {}
    _, _, width, height = chip.pixel_box
    return {"chip_hw": [height, width],
            "effective_resolution_m": [width * chip.scale_m / image_size, height * chip.scale_m / image_size]}


def tile_for(spatial: Spatial, scale_m: float = 10.0) -> "tiles.records.Chip":
    """The chip a spatial spec stands for, on its UTM zone's pixel lattice (``tiles.chips``): a PointBuffer is
    the square of side 2*buffer_m centred on the point (within half a pixel), a BBox its pixel-snapped
    rectangle; both are resized to the model's input size."""
    from tiles.chips import bbox_chip, point_chip

    if isinstance(spatial, PointBuffer):
        if spatial.buffer_m <= 0:
            raise ValueError("PointBuffer.buffer_m must be > 0 (half the side of the patch, metres)")
        return point_chip(spatial.lon, spatial.lat, spatial.buffer_m, scale_m)
    if isinstance(spatial, BBox):
        return bbox_chip(spatial.minlon, spatial.minlat, spatial.maxlon, spatial.maxlat, scale_m)
    raise TypeError(f"spatial must be PointBuffer or BBox, got {type(spatial).__name__}")


def _spec_errors(fn):
    """Bad input that the tiling layer finds (tiles.errors.InputError) reaches API callers as a SpecError."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from tiles.errors import InputError

        try:
            return fn(*args, **kwargs)
        except InputError as error:
            raise SpecError(str(error)) from None
    return wrapper


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_spatials(spatials: Sequence[Any]) -> None:
    """Refuse, before anything is fetched, a spec that is not a PointBuffer/BBox or has impossible values."""
    for spatial in spatials:
        if isinstance(spatial, PointBuffer):
            lon, lat, buffer_m = spatial.lon, spatial.lat, spatial.buffer_m
            if not all(_finite(v) for v in (lon, lat, buffer_m)):
                raise SpecError(f"{spatial}: lon, lat and buffer_m must be finite numbers")
            if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                raise SpecError(f"{spatial}: lon must be in [-180, 180] and lat in [-90, 90] (lon first)")
            if buffer_m <= 0:
                raise SpecError(f"{spatial}: buffer_m must be > 0 (half the side of the patch, metres)")
        elif isinstance(spatial, BBox):
            values = (spatial.minlon, spatial.minlat, spatial.maxlon, spatial.maxlat)
            if not all(_finite(v) for v in values):
                raise SpecError(f"{spatial}: bounds must be finite numbers")
            if not (-180 <= spatial.minlon < spatial.maxlon <= 180 and -90 <= spatial.minlat < spatial.maxlat <= 90):
                raise SpecError(f"{spatial}: needs -180 <= minlon < maxlon <= 180 and -90 <= minlat < maxlat <= 90 "
                                "(BBox(minlon, minlat, maxlon, maxlat) in degrees)")
        else:
            raise SpecError(f"spatial must be PointBuffer or BBox, got {type(spatial).__name__}")


def _check_request(model: str, backend: str, temporal, output, sensor) -> Tuple[TemporalSpec, SensorSpec]:
    """The validated (temporal, sensor), with the card's defaults for omitted ones."""
    if model != MODEL_ID:
        raise SpecError(f"model {model!r} is not available here; this package provides {MODEL_ID!r}")
    if str(backend).lower() not in BACKENDS:
        raise SpecError(f"backend {backend!r}: use 'gee' (Earth Engine) or 'auto' (the same here); "
                        "this package has no other provider")
    temporal = TemporalSpec.default() if temporal is None else temporal
    sensor = SensorSpec() if sensor is None else sensor
    for value, kind in ((temporal, TemporalSpec), (output, OutputSpec), (sensor, SensorSpec)):
        if not isinstance(value, kind):
            raise SpecError(f"expected a {kind.__name__}, got {type(value).__name__} ({value!r})")
    return temporal, sensor


@functools.lru_cache(maxsize=4)
def _cached_embedder(config):
    import models

    return models.DynamicVisEmbedder(config)


def _embedder(config):
    """The shared embedder for a config; any failure to build it is a ModelError saying why."""
    from models.checkpoint import CheckpointError
    from models.upstream import UpstreamCodeError

    try:
        return _cached_embedder(config)
    except (CheckpointError, UpstreamCodeError, ValueError, RuntimeError, OSError) as error:
        raise ModelError(f"DynamicVis model could not be loaded: {error}") from error


def _model_config(model_config, device: str):
    import models

    if model_config is not None:
        return model_config
    try:
        return models.ModelConfig.from_env(device=device)
    except (TypeError, ValueError) as error:
        raise ModelError(f"DynamicVis model settings: {error}") from None


def fetch_concurrency() -> int:
    """Concurrent Earth Engine requests of the batch API: ``RS_EMBED_DYNAMICVIS_FETCH_WORKERS`` (default 8),
    capped at this process's share of the project's concurrent-request limit."""
    from earth_engine import S2Settings
    from models.config import fetch_workers

    try:
        workers = fetch_workers()
    except ValueError as error:
        raise SpecError(str(error)) from None
    budget = S2Settings().concurrency
    if workers > budget:
        LOGGER.warning("RS_EMBED_DYNAMICVIS_FETCH_WORKERS=%d exceeds the Earth Engine budget of %d concurrent "
                       "requests; using %d", workers, budget, budget)
    return min(workers, budget)


def _connect(ee_settings) -> None:
    """Initialise Earth Engine with `ee_settings`; without them keep a connection the caller already made
    (``ee.Initialize(...)``) or use Application Default Credentials."""
    import earth_engine

    try:
        if ee_settings is None:
            import ee

            if ee.data.is_initialized():
                return
            ee_settings = earth_engine.EESettings()
        earth_engine.initialize(ee_settings)
    except Exception as error:  # credentials, key files, the discovery request: all mean "cannot connect"
        raise ProviderError(f"could not connect to Earth Engine ({type(error).__name__}: {error}); run "
                            "`earthengine authenticate` or `gcloud auth application-default login`, call "
                            "ee.Initialize(project=...) first, or pass ee_settings=earth_engine.EESettings(...)"
                            ) from None


def _embed_many(pixels: Sequence[np.ndarray], output: OutputSpec, config) -> List[Dict[str, Any]]:
    """Raw CHW arrays -> per-item dict(pooled, grid, pooling, grid_shape), batched by shape."""
    from models.batching import indices_by_shape

    embedder = _embedder(config)
    grid = output.mode == "grid"
    results: List[Optional[Dict[str, Any]]] = [None] * len(pixels)
    for indices in indices_by_shape(pixels):
        out = embedder.embed(np.stack([pixels[i] for i in indices]), pooling=output.pooling, grid=grid)
        for row, index in enumerate(indices):
            results[index] = {"pooled": out["pooled"][row], "grid": None if out["grid"] is None else out["grid"][row],
                              "pooling": out["pooling"], "grid_shape": out["grid_shape"]}
    return cast(List[Dict[str, Any]], results)  # every index filled


def _package(result: Dict[str, Any], output: OutputSpec, meta: Dict[str, Any]) -> Embedding:
    """The card's containers: (D,) float32, or an xarray.DataArray 'embedding' (d, y, x) with integer coords."""
    if output.mode == "grid":
        import xarray as xr

        grid = np.asarray(result["grid"], np.float32)
        coords = {dim: np.arange(size) for dim, size in zip(("d", "y", "x"), grid.shape)}
        return Embedding(xr.DataArray(grid, dims=("d", "y", "x"), coords=coords, name="embedding", attrs=meta), meta)
    return Embedding(np.asarray(result["pooled"], np.float32), meta)


def _meta(config, output: OutputSpec, temporal: TemporalSpec, sensor: SensorSpec,
          tile: "Optional[Union[Tile, tiles.records.Chip]]",
          result: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    """The adapter's metadata keys (model, sensor, temporal, checkpoint, feature-map layout), then ours."""
    meta: Dict[str, Any] = {"model": MODEL_ID, "type": "on_the_fly", "backend": "gee", "source": sensor.collection,
                            "sensor": sensor.to_meta(), "temporal": temporal.to_meta(),
                            "input_time": temporal.midpoint()}
    meta.update(_embedder(config).metadata)
    grid_shape = tuple(result["grid_shape"])
    meta.update({"feature_shape": grid_shape, "grid_hw": grid_shape[1:], "grid_shape": grid_shape,
                 "output": output.mode, "pooling": result["pooling"] if output.mode == "pooled" else None})
    if output.mode == "pooled":
        meta["pooled_shape"] = (grid_shape[0],)
    if tile is not None:
        meta.update({"tile_id": tile.tile_id, "crs": tile.crs, "transform": list(tile.transform),
                     "tile_px": tile.tile_px, "scale_m": tile.scale_m})
    meta.update(extra)
    meta.update(_chip_meta(tile, meta.get("image_size", meta.get("img"))))
    return meta


@_spec_errors
def get_embeddings_batch(model: str = MODEL_ID, *, spatials: Sequence[Spatial],
                         temporal: Optional[TemporalSpec] = None, output: OutputSpec = OutputSpec.pooled(),
                         backend: str = "auto", sensor: Optional[SensorSpec] = None, device: str = "auto",
                         ee_settings=None, model_config=None) -> List[Embedding]:
    """One Embedding per spatial spec, fetched together (super-tiles, `RS_EMBED_DYNAMICVIS_FETCH_WORKERS`
    concurrent requests) and embedded in batches.

    Args:
        model: Must be 'dynamicvis'.
        spatials: The patches, each a `PointBuffer` or `BBox`.
        temporal: The time window; default `DEFAULT_TEMPORAL_RANGE` (2022-06-01 to 2022-09-01).
        output: `OutputSpec.pooled()` (default) or `OutputSpec.grid()`.
        backend: 'auto' or 'gee' (both Earth Engine).
        sensor: The `SensorSpec`; default S2 SR harmonized B4/B3/B2 at 10 m.
        device: 'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'; used only without `model_config`.
        ee_settings: `earth_engine.EESettings` to connect with; default the connection this process already
            made, else Application Default Credentials.
        model_config: A `models.ModelConfig`; default `ModelConfig.from_env(device=device)`.

    Returns:
        One Embedding per spec, in the order given ([] for no specs).

    Raises:
        SpecError: A bad argument, before anything is fetched.
        ProviderError: No connection to Earth Engine, or specs that could not be fetched (each named, e.g. no
            scenes in the window).
        ModelError: The model could not be configured or loaded.
    """
    import earth_engine

    temporal, sensor = _check_request(model, backend, temporal, output, sensor)
    spatials = list(spatials)
    _check_spatials(spatials)
    if not spatials:
        return []
    config = _model_config(model_config, device)
    requests = [TileRequest(tile_for(s, sensor.scale_m), temporal.window, f"api-{i}") for i, s in enumerate(spatials)]
    s2 = earth_engine.S2Settings(cloudy_pct=sensor.cloudy_pct, composite=sensor.composite,
                                 max_concurrency=fetch_concurrency())
    _connect(ee_settings)
    fetched = earth_engine.Fetcher(s2).fetch(requests)
    failed = [(s, r) for s, r in zip(spatials, fetched) if isinstance(r, DeadLetter)]
    if failed:
        raise ProviderError("could not fetch: " + "; ".join(f"{s}: {r.error_class}: {r.message}" for s, r in failed))
    pixels = cast("List[tiles.records.TilePixels]", fetched)  # no dead letters
    results = _embed_many([p.chw for p in pixels], output, config)
    return [_package(result, output, _meta(config, output, temporal, sensor, p.request.tile, result,
                                            {"n_scenes": p.n_scenes, "valid_fraction": p.valid_fraction}))
            for result, p in zip(results, pixels)]


@_spec_errors
def get_embedding(model: str = MODEL_ID, *, spatial: Optional[Spatial] = None,
                  temporal: Optional[TemporalSpec] = None, output: OutputSpec = OutputSpec.pooled(),
                  backend: str = "auto", sensor: Optional[SensorSpec] = None, device: str = "auto",
                  input_chw: Optional[np.ndarray] = None, ee_settings=None, model_config=None) -> Embedding:
    """The embedding of one patch. With `input_chw` nothing is fetched.

    Args:
        model: Must be 'dynamicvis'.
        spatial: The patch, a `PointBuffer` or `BBox`; required unless `input_chw` is given (then it only
            adds the chip's location to `meta`).
        temporal: The time window; default `DEFAULT_TEMPORAL_RANGE` (2022-06-01 to 2022-09-01).
        output: `OutputSpec.pooled()` (default) or `OutputSpec.grid()`.
        backend: 'auto' or 'gee' (both Earth Engine).
        sensor: The `SensorSpec`; default S2 SR harmonized B4/B3/B2 at 10 m.
        device: 'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'; used only without `model_config`.
        input_chw: Raw S2 SR reflectance, (3, H, W) in B4, B3, B2 order (0..10000 scale), instead of a fetch.
        ee_settings: `earth_engine.EESettings` to connect with; default the connection this process already
            made, else Application Default Credentials.
        model_config: A `models.ModelConfig`; default `ModelConfig.from_env(device=device)`.

    Returns:
        The Embedding.

    Raises:
        SpecError: A bad argument (or `input_chw` of the wrong shape), before anything is fetched.
        ProviderError: No connection to Earth Engine, or the patch could not be fetched.
        ModelError: The model could not be configured or loaded.
    """
    temporal, sensor = _check_request(model, backend, temporal, output, sensor)
    if input_chw is not None:
        from models.preprocess import check_raw_chw  # the message names the caller's (3, H, W) array

        try:
            chw = check_raw_chw(input_chw)
        except (TypeError, ValueError) as error:
            raise SpecError(f"input_chw: {error}") from None
        if spatial is not None:
            _check_spatials([spatial])
        config = _model_config(model_config, device)
        (result,) = _embed_many([chw], output, config)
        tile = tile_for(spatial, sensor.scale_m) if spatial is not None else None
        return _package(result, output, _meta(config, output, temporal, sensor, tile, result, {"input": "input_chw"}))
    if spatial is None:
        raise SpecError("give spatial=PointBuffer(...) or BBox(...), or input_chw=")
    (embedding,) = get_embeddings_batch(model, spatials=[spatial], temporal=temporal, output=output,
                                        backend=backend, sensor=sensor, device=device, ee_settings=ee_settings,
                                        model_config=model_config)
    return embedding
