"""The adapter card's Python API: `get_embedding` / `get_embeddings_batch` for DynamicVis on Sentinel-2 RGB.

Same code as the pipeline, not a second implementation: pixels come from `earth_engine.fetch_tiles` on the
pipeline's UTM tile grid and vectors from `models.DynamicVisEmbedder`. A spatial spec becomes one grid tile:
`PointBuffer` -> the tile of side 2*buffer_m that contains the point, `BBox` -> the tile of side
max(width, height) that contains its centre; so a result equals the pipeline's row for the same tile size.

    emb = get_embedding("dynamicvis", spatial=PointBuffer(lon=121.5, lat=31.2, buffer_m=2048),
                        temporal=TemporalSpec.range("2022-06-01", "2022-09-01"), output=OutputSpec.pooled())
    emb.data  # (D,) float32; OutputSpec.grid() gives an xarray.DataArray (D, H, W); emb.meta: the card's metadata
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from tiles.records import DeadLetter, Tile, TileRequest, TimeWindow

MODEL_ID = "dynamicvis"


@dataclasses.dataclass(frozen=True)
class PointBuffer:
    lon: float
    lat: float
    buffer_m: float


@dataclasses.dataclass(frozen=True)
class BBox:
    minlon: float
    minlat: float
    maxlon: float
    maxlat: float


@dataclasses.dataclass(frozen=True)
class TemporalSpec:
    start: dt.date
    end: dt.date  # exclusive

    @classmethod
    def range(cls, start: Union[str, dt.date], end: Union[str, dt.date]) -> "TemporalSpec":
        from tiles.time_windows import parse_date

        first = start if isinstance(start, dt.date) else parse_date(start, "start")
        last = end if isinstance(end, dt.date) else parse_date(end, "end")
        return cls(first, last)

    @property
    def window(self) -> TimeWindow:
        return TimeWindow(self.start, self.end)


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    mode: str = "pooled"  # 'pooled' | 'grid'
    pooling: str = "mean"  # for pooled: 'mean' | 'max'

    @classmethod
    def pooled(cls, pooling: str = "mean") -> "OutputSpec":
        return cls("pooled", pooling)

    @classmethod
    def grid(cls) -> "OutputSpec":
        return cls("grid", "mean")


@dataclasses.dataclass(frozen=True)
class SensorSpec:
    """The card's default sensor: S2 SR harmonized, B4/B3/B2, 10 m, cloudy_pct 30, median composite."""

    scale_m: float = 10.0
    cloudy_pct: float = 30.0
    composite: str = "median"


@dataclasses.dataclass
class Embedding:
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


@functools.lru_cache(maxsize=4)
def _embedder(config):
    import models

    return models.DynamicVisEmbedder(config)


def _model_config(model_config, device: str):
    import models

    if model_config is not None:
        return model_config
    return models.ModelConfig.from_env(device=device)


def _check_model(model: str) -> None:
    if model != MODEL_ID:
        raise ValueError(f"model {model!r} is not available here; this package provides {MODEL_ID!r}")


def _embed_many(pixels: Sequence[np.ndarray], output: OutputSpec, config) -> List[Dict[str, Any]]:
    """Raw CHW arrays -> per-item dict(pooled, grid), batched by shape through the shared embedder."""
    embedder = _embedder(config)
    grid = output.mode == "grid"
    results: List[Optional[Dict[str, Any]]] = [None] * len(pixels)
    by_shape: Dict[tuple, List[int]] = {}
    for index, chw in enumerate(pixels):
        by_shape.setdefault(np.shape(chw), []).append(index)
    for indices in by_shape.values():
        out = embedder.embed(np.stack([pixels[i] for i in indices]), pooling=output.pooling, grid=grid)
        for row, index in enumerate(indices):
            results[index] = {"pooled": out["pooled"][row], "grid": None if out["grid"] is None else out["grid"][row]}
    return results


def _package(result: Dict[str, Any], output: OutputSpec, meta: Dict[str, Any]) -> Embedding:
    if output.mode == "grid":
        import xarray as xr

        grid = result["grid"]
        data = xr.DataArray(grid, dims=("d", "y", "x"), attrs=meta, name="dynamicvis_grid")
        return Embedding(data, meta)
    return Embedding(np.asarray(result["pooled"], np.float32), meta)


def _meta(config, output: OutputSpec, temporal: TemporalSpec, sensor: SensorSpec, tile: Optional[Tile],
          extra: Dict[str, Any]) -> Dict[str, Any]:
    meta = dict(_embedder(config).metadata)
    meta.update({"feature_kind": "featmap_mean" if output.pooling == "mean" else "featmap_max",
                 "output": output.mode, "pooling": output.pooling if output.mode == "pooled" else None,
                 "temporal": {"start": temporal.start.isoformat(), "end": temporal.end.isoformat()},
                 "sensor": dataclasses.asdict(sensor), "backend": "gee"})
    if tile is not None:
        meta.update({"tile_id": tile.tile_id, "crs": tile.crs, "transform": list(tile.transform),
                     "tile_px": tile.tile_px})
    meta.update(extra)
    meta.update(_chip_meta(tile, meta.get("image_size", meta.get("img"))))
    return meta


def get_embeddings_batch(model: str = MODEL_ID, *, spatials: Sequence[Spatial], temporal: TemporalSpec,
                         output: OutputSpec = OutputSpec.pooled(), backend: str = "gee",
                         sensor: Optional[SensorSpec] = None, ee_settings=None, model_config=None,
                         device: str = "auto") -> List[Embedding]:
    """One Embedding per spatial spec, fetched together (super-tiles, concurrency) and embedded in batches.
    Raises RuntimeError naming the specs that could not be fetched (e.g. no scenes in the window)."""
    import earth_engine

    _check_model(model)
    if backend != "gee":
        raise ValueError(f"backend {backend!r}: only 'gee' (Earth Engine) is supported")
    sensor = sensor or SensorSpec()
    config = _model_config(model_config, device)
    requests = [TileRequest(tile_for(s, sensor.scale_m), temporal.window, f"api-{i}") for i, s in enumerate(spatials)]
    s2 = earth_engine.S2Settings(cloudy_pct=sensor.cloudy_pct, composite=sensor.composite)
    fetched = earth_engine.fetch_tiles(requests, s2, ee_settings or earth_engine.EESettings())
    failed = [(s, r) for s, r in zip(spatials, fetched) if isinstance(r, DeadLetter)]
    if failed:
        raise RuntimeError("could not fetch: " + "; ".join(f"{s}: {r.error_class}: {r.message}" for s, r in failed))
    results = _embed_many([p.chw for p in fetched], output, config)
    return [_package(result, output, _meta(config, output, temporal, sensor, p.request.tile,
                                            {"n_scenes": p.n_scenes, "valid_fraction": p.valid_fraction}))
            for result, p in zip(results, fetched)]


def get_embedding(model: str = MODEL_ID, *, spatial: Optional[Spatial] = None, temporal: TemporalSpec,
                  output: OutputSpec = OutputSpec.pooled(), backend: str = "gee",
                  sensor: Optional[SensorSpec] = None, input_chw: Optional[np.ndarray] = None, ee_settings=None,
                  model_config=None, device: str = "auto") -> Embedding:
    """The embedding of one patch. With `input_chw` (raw S2 SR, (3, H, W) in B4,B3,B2 order) nothing is fetched."""
    _check_model(model)
    if input_chw is not None:
        sensor = sensor or SensorSpec()
        config = _model_config(model_config, device)
        from models.preprocess import check_raw_chw  # the message names the caller's (3, H, W) array

        (result,) = _embed_many([check_raw_chw(input_chw)], output, config)
        tile = tile_for(spatial, sensor.scale_m) if spatial is not None else None
        return _package(result, output, _meta(config, output, temporal, sensor, tile, {"input": "input_chw"}))
    if spatial is None:
        raise ValueError("give spatial=PointBuffer(...) or BBox(...), or input_chw=")
    (embedding,) = get_embeddings_batch(model, spatials=[spatial], temporal=temporal, output=output,
                                        backend=backend, sensor=sensor, ee_settings=ee_settings,
                                        model_config=model_config, device=device)
    return embedding
