"""The one output schema, as pyarrow (Parquet, GeoParquet) and as BigQuery, and the row encoders.

A row is built once (`encode_row`) as a plain dict of Python values; the Parquet writer takes it as is and
`to_bigquery_row` only re-spells the few values whose BigQuery JSON form differs (dates, timestamps,
geometry as WKT). Keeping both schemas in this module makes it impossible for them to drift apart.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import pyarrow as pa

from tiles import records
from tiles.grid import geodesic_wkt, is_primary, tile_center_lonlat, tile_footprint_wgs84
from tiles.records import TileRequest, TimeWindow

GEOMETRY_COLUMN = "geometry"
BBOX_COLUMN = "bbox"  # GeoParquet 1.1 covering of the footprint: readers prune row groups by its statistics
PARQUET_COMPRESSION = "zstd"
RUN_METADATA_KEY = b"dynamicvis.run"
GEO_METADATA_KEY = b"geo"


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Per-run values that every row carries; known at launch, identical on all workers."""

    pipeline_version: str
    composite: str
    cloudy_pct: float
    pooling: str
    created_at: dt.datetime  # UTC, the launch time: reruns of one job are distinguishable


@dataclasses.dataclass(frozen=True)
class TileMeta:
    """What inference keys carry alongside the pixels: the request and the fetch statistics."""

    request: TileRequest
    valid_fraction: float
    n_scenes: Optional[int]


# --------------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------------

# (name, arrow type, BigQuery type, BigQuery mode, description)
_COLUMNS = [
    ("tile_id", pa.string(), "STRING", "REQUIRED", "UTM grid tile id: EPSG_<px>px<scale>m_<ix>_<iy>"),
    ("request_id", pa.string(), "STRING", "REQUIRED", "id of the user request (region / point) the tile came from"),
    ("lon", pa.float64(), "FLOAT64", "REQUIRED", "tile centre longitude (WGS84)"),
    ("lat", pa.float64(), "FLOAT64", "REQUIRED", "tile centre latitude (WGS84)"),
    (GEOMETRY_COLUMN, pa.binary(), "GEOGRAPHY", "REQUIRED",
     "tile footprint (WKB in Parquet, planar edges: split at the antimeridian into a MultiPolygon where it "
     "crosses it; one geodesic loop in BigQuery)"),
    ("is_primary", pa.bool_(), "BOOL", "REQUIRED",
     "the tile's centre lies in its own UTM zone's 6-degree band and hemisphere: keep only these rows to drop "
     "most duplicates where the grids of two zones (or hemispheres) overlap at a seam"),
    ("crs", pa.string(), "STRING", "REQUIRED", "tile pixel grid CRS, e.g. EPSG:32633"),
    ("transform", pa.list_(pa.float64()), "FLOAT64", "REPEATED",
     "affine pixel grid in Earth Engine order: xScale, xShear, xTranslation, yShear, yScale, yTranslation"),
    ("tile_px", pa.int32(), "INT64", "REQUIRED", "tile size in pixels"),
    ("scale_m", pa.float64(), "FLOAT64", "REQUIRED", "pixel size in metres"),
    ("start_date", pa.date32(), "DATE", "REQUIRED", "time window start (inclusive)"),
    ("end_date", pa.date32(), "DATE", "REQUIRED", "time window end (exclusive)"),
    ("composite", pa.string(), "STRING", "REQUIRED", "Sentinel-2 compositing method"),
    ("cloudy_pct", pa.float64(), "FLOAT64", "REQUIRED", "max CLOUDY_PIXEL_PERCENTAGE of scenes"),
    ("n_scenes", pa.int32(), "INT64", "NULLABLE", "scenes in the composite"),
    ("valid_fraction", pa.float64(), "FLOAT64", "REQUIRED", "fraction of unmasked pixels"),
    ("model", pa.string(), "STRING", "REQUIRED", "model id"),
    ("arch", pa.string(), "STRING", "REQUIRED", "DynamicVis arch"),
    ("checkpoint_repo", pa.string(), "STRING", "NULLABLE", "Hugging Face repo of the checkpoint"),
    ("checkpoint_file", pa.string(), "STRING", "NULLABLE", "checkpoint file (HF file, path or URI)"),
    ("checkpoint_sha256", pa.string(), "STRING", "NULLABLE", "sha256 of the checkpoint file"),
    ("img_size", pa.int32(), "INT64", "REQUIRED", "model input size"),
    ("path_type", pa.string(), "STRING", "REQUIRED", "DynamicVis path type"),
    ("sampling_scale", pa.float64(), "FLOAT64", "REQUIRED", "DynamicVis sampling scale"),
    ("mamba2", pa.bool_(), "BOOL", "REQUIRED", "DynamicVis Mamba2 flag"),
    ("pooling", pa.string(), "STRING", "REQUIRED", "feature-map pooling: mean | max"),
    ("precision", pa.string(), "STRING", "NULLABLE",
     "precision the model ran in: fp32 | bf16 (after --precision auto)"),
    ("embedding", pa.list_(pa.float32()), "FLOAT64", "REPEATED", "pooled last-stage embedding"),
    ("dim", pa.int32(), "INT64", "REQUIRED", "embedding length"),
    ("pipeline_version", pa.string(), "STRING", "REQUIRED", "version of this pipeline"),
    ("created_at", pa.timestamp("us", tz="UTC"), "TIMESTAMP", "REQUIRED", "run launch time"),
]
_GRID_COLUMNS = [
    ("grid", pa.list_(pa.float32()), "last-stage feature map, row-major (D, H, W), flattened"),
    ("grid_shape", pa.list_(pa.int32()), "(D, H, W) of grid"),
]
_BBOX_TYPE = pa.struct([pa.field(name, pa.float64(), nullable=False) for name in ("xmin", "ymin", "xmax", "ymax")])
_REQUIRED_MODES = {"REQUIRED"}


def geo_metadata() -> Dict[str, Any]:
    """GeoParquet 1.1 file metadata for the WKB footprint column (lon/lat, OGC:CRS84 when crs is omitted)."""
    return {
        "version": "1.1.0",
        "primary_column": GEOMETRY_COLUMN,
        "columns": {GEOMETRY_COLUMN: {
            "encoding": "WKB", "geometry_types": ["Polygon", "MultiPolygon"], "edges": "planar",
            "covering": {"bbox": {corner: [BBOX_COLUMN, corner] for corner in ("xmin", "ymin", "xmax", "ymax")}}}},
    }


def arrow_schema(grid: bool = False, run_config: Optional[Mapping[str, Any]] = None,
                 embedding_dim: Optional[int] = None) -> pa.Schema:
    """Parquet schema; `run_config` (JSON-able) goes into the file metadata next to the GeoParquet 'geo' key.

    With `embedding_dim` the embedding is a fixed-size list of float32 (an ARRAY to Arrow readers); the bbox
    covering column is Parquet-only, as is the grid."""
    fields = [pa.field(name, typ, nullable=mode not in _REQUIRED_MODES, metadata={"description": desc})
              for name, typ, _, mode, desc in _COLUMNS]
    if embedding_dim is not None:
        index = [f.name for f in fields].index("embedding")
        fields[index] = fields[index].with_type(pa.list_(pa.float32(), int(embedding_dim)))
    fields.append(pa.field(BBOX_COLUMN, _BBOX_TYPE, nullable=False,
                           metadata={"description": "bounding box of the footprint (GeoParquet covering)"}))
    if grid:
        fields += [pa.field(name, typ, nullable=True, metadata={"description": desc})
                   for name, typ, desc in _GRID_COLUMNS]
    metadata = {GEO_METADATA_KEY: json.dumps(geo_metadata()).encode()}
    if run_config is not None:
        metadata[RUN_METADATA_KEY] = json.dumps(run_config, sort_keys=True, default=str).encode()
    return pa.schema(fields, metadata=metadata)


def bigquery_schema() -> Dict[str, List[Dict[str, str]]]:
    """BigQuery table schema (the JSON form WriteToBigQuery accepts). The grid is Parquet-only."""
    return {"fields": [{"name": name, "type": bq_type, "mode": mode, "description": desc}
                       for name, _, bq_type, mode, desc in _COLUMNS]}


def bigquery_table_parameters() -> Dict[str, Any]:
    """Partitioning by start_date and clustering by tile_id, as additional_bq_parameters."""
    return {"timePartitioning": {"type": "DAY", "field": "start_date"},
            "clustering": {"fields": ["tile_id"]}}


# --------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------

def row_key(tile_id: str, start_date: dt.date, end_date: dt.date) -> str:
    """The unique key of an output row; equals `TileRequest.key` for the row's request."""
    return records.row_key(tile_id, TimeWindow(start_date, end_date))


def _required(model_meta: Mapping[str, Any], name: str) -> Any:
    value = model_meta.get(name)
    if value is None:
        raise ValueError(f"model metadata lacks {name!r} (got keys {sorted(model_meta)})")
    return value


def encode_row(meta: TileMeta, embedding: np.ndarray, model_meta: Mapping[str, Any], run: RunInfo,
               grid: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """One output row as Python values matching `arrow_schema`."""
    request = meta.request
    tile = request.tile
    lon, lat = tile_center_lonlat(tile)
    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    footprint = tile_footprint_wgs84(tile)
    row = {
        "tile_id": tile.tile_id,
        "request_id": request.request_id,
        "lon": lon,
        "lat": lat,
        GEOMETRY_COLUMN: footprint.wkb,
        "is_primary": is_primary(tile),
        "crs": tile.crs,
        "transform": [float(v) for v in tile.transform],
        "tile_px": int(tile.tile_px),
        "scale_m": float(tile.scale_m),
        "start_date": request.window.start,
        "end_date": request.window.end,
        "composite": run.composite,
        "cloudy_pct": float(run.cloudy_pct),
        "n_scenes": None if meta.n_scenes is None else int(meta.n_scenes),
        "valid_fraction": float(meta.valid_fraction),
        "model": "dynamicvis",
        "arch": str(_required(model_meta, "arch")),
        "checkpoint_repo": model_meta.get("hf_repo"),
        "checkpoint_file": model_meta.get("ckpt_file"),
        "checkpoint_sha256": model_meta.get("ckpt_sha256"),
        "img_size": int(_required(model_meta, "image_size")),
        "path_type": str(_required(model_meta, "path_type")),
        "sampling_scale": float(_required(model_meta, "sampling_scale")),
        "mamba2": bool(model_meta.get("mamba2", False)),
        "pooling": run.pooling,
        "precision": model_meta.get("precision"),
        "embedding": vector.tolist(),
        "dim": int(vector.size),
        "pipeline_version": run.pipeline_version,
        "created_at": run.created_at,
        BBOX_COLUMN: dict(zip(("xmin", "ymin", "xmax", "ymax"), (float(v) for v in footprint.bounds))),
    }
    if grid is not None:
        grid = np.asarray(grid, dtype=np.float32)
        row["grid"] = grid.reshape(-1).tolist()
        row["grid_shape"] = [int(v) for v in grid.shape]
    return row


def to_bigquery_row(row: Mapping[str, Any]) -> Dict[str, Any]:
    """Re-spell an `encode_row` row for BigQuery JSON loads: WKT geography, ISO dates; no grid, no bbox."""
    from shapely import wkb

    out = {name: row[name] for name, *_ in _COLUMNS}
    out[GEOMETRY_COLUMN] = geodesic_wkt(wkb.loads(row[GEOMETRY_COLUMN]))
    out["start_date"] = row["start_date"].isoformat()
    out["end_date"] = row["end_date"].isoformat()
    out["created_at"] = row["created_at"].astimezone(dt.timezone.utc).isoformat()
    out["embedding"] = [float(v) for v in row["embedding"]]
    return out


def row_grid(row: Mapping[str, Any]) -> Optional[np.ndarray]:
    """The (D, H, W) grid of a Parquet row, or None."""
    if row.get("grid") is None:
        return None
    return np.asarray(row["grid"], dtype=np.float32).reshape(row["grid_shape"])
