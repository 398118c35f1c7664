"""A synthetic run's output: embedding shards with known vectors, written with the real schema code.

Rows are encoded by `transforms.schema.encode_row` and written with `transforms.schema.arrow_schema`, so tests
built on this break when the schema drifts. For large runs (benchmarks) the per-tile columns are encoded
once and the rows repeated over time windows, with the embeddings set as one columnar array.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tiles.records import Tile, TileRequest, TimeWindow
from transforms import schema

RUN = schema.RunInfo(pipeline_version="0.1.0", composite="median", cloudy_pct=30.0, pooling="mean",
                     created_at=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc))
MODEL_META = {"arch": "b", "img": 64, "image_size": 64,  # "img" before, "image_size" after the metadata rename
              "path_type": "forward_reverse_mean", "sampling_scale": 0.1,
              "mamba2": False, "hf_repo": "KyanChen/DynamicVis", "ckpt_file": "x.pth", "ckpt_sha256": "ab" * 32}
WINDOW = TimeWindow(dt.date(2024, 6, 1), dt.date(2024, 7, 1))


def tiles_block(epsg: int, ix0: int, iy0: int, cols: int, rows: int, tile_px: int = 32,
                scale_m: float = 10.0) -> List[Tile]:
    """cols x rows adjacent tiles of one UTM grid, row-major from (ix0, iy0)."""
    return [Tile(epsg, ix0 + i, iy0 + j, tile_px, scale_m) for j in range(rows) for i in range(cols)]


def encode_rows(tiles: Sequence[Tile], embeddings: np.ndarray, window: TimeWindow = WINDOW,
                grids: Optional[np.ndarray] = None) -> List[dict]:
    rows = []
    for i, tile in enumerate(tiles):
        meta = schema.TileMeta(TileRequest(tile, window, "synthetic"), valid_fraction=1.0, n_scenes=3)
        rows.append(schema.encode_row(meta, embeddings[i], MODEL_META, RUN,
                                      grid=None if grids is None else grids[i]))
    return rows


def as_fixed_size(table: pa.Table, column: str = "embedding") -> pa.Table:
    """The table with `column` as fixed_size_list<float32> (the other spelling readers must accept)."""
    values = table.column(column).combine_chunks()
    d = len(values[0]) if len(values) else 0
    fixed = pa.FixedSizeListArray.from_arrays(values.flatten(), d)
    index = table.schema.get_field_index(column)
    return table.set_column(index, pa.field(column, fixed.type, nullable=False), fixed)


def write_shards(directory: str, rows: List[dict], shards: int = 2, grid: bool = False, fixed_size: bool = False,
                 tag: str = "run") -> List[str]:
    """`rows` split over `shards` files `embeddings-<tag>-SSSSS-of-NNNNN.parquet` in `directory`."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for s, part in enumerate(np.array_split(np.arange(len(rows)), shards)):
        table = pa.Table.from_pylist([rows[i] for i in part], schema=schema.arrow_schema(grid=grid))
        if fixed_size:
            table = as_fixed_size(table)
        path = os.path.join(directory, f"embeddings-{tag}-{s:05d}-of-{shards:05d}.parquet")
        pq.write_table(table, path)
        paths.append(path)
    return paths


def write_large_run(directory: str, n_rows: int, dim: int, tiles_per_window: int = 10_000,
                    rows_per_file: int = 100_000, seed: int = 0) -> int:
    """`n_rows` rows of random embeddings: `tiles_per_window` tiles repeated over consecutive one-day
    windows (so every key is distinct), in files of about `rows_per_file` rows. Returns the rows written."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(tiles_per_window)))
    tiles = tiles_block(32632, 1400, 15000, side, side)[:tiles_per_window]
    base = pa.Table.from_pylist(encode_rows(tiles, np.zeros((len(tiles), dim), np.float32)),
                                schema=schema.arrow_schema())

    def with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
        return table.set_column(table.schema.get_field_index(name), table.schema.field(name), values)

    os.makedirs(directory, exist_ok=True)
    pending: List[pa.Table] = []
    written = files = day = 0
    while written < n_rows:
        take = min(len(base), n_rows - written - sum(len(p) for p in pending))
        start = WINDOW.start + dt.timedelta(days=day)
        part = with_column(base.slice(0, take), "start_date", pa.array([start] * take, pa.date32()))
        pending.append(with_column(part, "end_date", pa.array([start + dt.timedelta(days=1)] * take, pa.date32())))
        day += 1
        n_pending = sum(len(p) for p in pending)
        if n_pending >= rows_per_file or written + n_pending == n_rows:
            table = pa.concat_tables(pending)
            vectors = rng.standard_normal((len(table), dim), dtype=np.float32)
            offsets = pa.array(np.arange(len(table) + 1, dtype=np.int32) * dim)
            table = with_column(table, "embedding", pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1))))
            # row groups of ~12 MB at 768 floats, about what the pipeline's 16 MB row-group buffer writes
            pq.write_table(table, os.path.join(directory, f"embeddings-bench-{files:05d}.parquet"), row_group_size=4096)
            written += len(table)
            files += 1
            pending = []
    return written
