"""Reading a run's embedding shards for maps and search: shard discovery, column-pruned streaming, vectors,
and a bounded run-wide sample.

Shards are the `embeddings-*.parquet` files directly under the run's output. They are read one file at a time
in record batches of only the needed columns, so memory stays at one batch whatever the run's size, and
files written with `list<float>` and with `fixed_size_list<float>` embeddings can sit side by side.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
from typing import Dict, Iterator, List, Optional, Sequence, Set

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tiles.errors import InputError

SHARD_GLOB = "embeddings-*.parquet"
BATCH_ROWS = 8192
# What places a row on its UTM tile grid (transform: Earth Engine order, translation = top-left corner).
POSITION_COLUMNS = ("crs", "transform", "tile_px", "scale_m")
WINDOW_COLUMNS = ("start_date", "end_date")


def shard_files(output: str) -> List[str]:
    """The run's non-empty embedding shards, sorted; a clear error when there are none."""
    if "://" in output:
        raise InputError(f"--input {output}: only local directories are read; copy the shards first "
                         f"(e.g. gcloud storage cp '{output.rstrip('/')}/{SHARD_GLOB}' DIR)")
    if not os.path.isdir(output):
        raise InputError(f"--input {output} is not a directory; pass the --output directory of a run")
    from transforms.durable_write import embedding_files  # the writer's own rule for what counts as a shard

    files = embedding_files(output)
    if not files:
        raise InputError(f"--input {output} holds no {SHARD_GLOB} shards; pass the --output directory of a "
                         f"finished run")
    return files


def iter_batches(files: Sequence[str], columns: Sequence[str],
                 batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches of only `columns`, file by file (each file keeps its own schema)."""
    for path in files:
        handle = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering would read all row groups at once
        missing = [c for c in columns if c not in handle.schema_arrow.names]
        if missing:
            raise InputError(f"{path} lacks column(s) {', '.join(missing)}: not an embedding shard of this "
                             f"pipeline (or written without --grid, if 'grid' is missing)")
        yield from handle.iter_batches(batch_size=batch_rows, columns=list(columns))


def vectors(column) -> np.ndarray:
    """A list or fixed-size-list column of equal-length float vectors -> (n, d) float32 (zero copy if it can)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if column.null_count:
        raise ValueError(f"{column.null_count} null vector(s) in a column that must not have any")
    if pa.types.is_fixed_size_list(column.type):
        d = column.type.list_size
    else:
        lengths = pc.list_value_length(column)
        d = int(pc.min(lengths).as_py() or 0) if n else 0
        if n and pc.max(lengths).as_py() != d:
            raise ValueError("vectors of different lengths in one column (rows of different models?)")
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(n, d)


@dataclasses.dataclass(frozen=True)
class Window:
    start: dt.date
    end: dt.date

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"


def in_window(batch: pa.RecordBatch, window: Optional[Window]) -> pa.RecordBatch:
    """The rows of `batch` in `window` (all of them for None)."""
    if window is None:
        return batch
    mask = pc.and_(pc.equal(batch.column("start_date"), pa.scalar(window.start, pa.date32())),
                   pc.equal(batch.column("end_date"), pa.scalar(window.end, pa.date32())))
    return batch.filter(mask)


def windows_of(files: Sequence[str]) -> Set[Window]:
    """The time windows present in the shards (reads only the two date columns)."""
    found: Set[Window] = set()
    for batch in iter_batches(files, WINDOW_COLUMNS, batch_rows=65536):
        pairs = pa.Table.from_batches([batch]).group_by(list(WINDOW_COLUMNS)).aggregate([])
        found.update(Window(s, e) for s, e in zip(pairs.column("start_date").to_pylist(),
                                                  pairs.column("end_date").to_pylist()))
    return found


def pick_window(files: Sequence[str], start: Optional[str]) -> Window:
    """The one window of the run, or the one starting at `start` (YYYY-MM-DD); a clear error otherwise."""
    found = sorted(windows_of(files), key=lambda w: w.start)
    listing = ", ".join(str(w) for w in found)
    if start is None:
        if len(found) != 1:
            raise InputError(f"the run holds {len(found)} time windows ({listing}); pick one with --window START")
        return found[0]
    try:
        day = dt.date.fromisoformat(start)
    except ValueError:
        raise InputError(f"--window {start!r}: expected a start date YYYY-MM-DD") from None
    chosen = [w for w in found if w.start == day]
    if not chosen:
        raise InputError(f"--window {start}: no window of the run starts then; the run holds {listing}")
    return chosen[0]


class Reservoir:
    """A uniform sample without replacement of at most `size` vectors out of a stream of any length.

    Each vector gets a random priority and the `size` lowest priorities are kept: once the sample is full,
    only vectors below the largest kept priority are set aside, and those are merged in when they reach
    `size`, so memory stays at most ~2 x size vectors plus a batch, and the sample (for a fixed seed and
    file order) is reproducible.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        if size < 1:
            raise ValueError(f"sample size must be >= 1, got {size}")
        self.size = size
        self.seen = 0
        self._rng = np.random.default_rng(seed)
        self._priorities: List[np.ndarray] = []
        self._chunks: List[np.ndarray] = []
        self._pending = 0
        self._threshold = np.inf  # the largest kept priority once the sample is full

    def add(self, batch: np.ndarray) -> None:
        if not len(batch):
            return
        if self._chunks and batch.shape[1] != self._chunks[0].shape[1]:
            raise ValueError(f"embeddings of length {batch.shape[1]} and {self._chunks[0].shape[1]} in one run")
        self.seen += len(batch)
        priority = self._rng.random(len(batch))
        entering = priority < self._threshold
        self._priorities.append(priority[entering])
        self._chunks.append(np.array(batch[entering], np.float32))
        self._pending += int(entering.sum())
        if self._pending >= 2 * self.size:
            self._merge()

    def _merge(self) -> None:
        priority = np.concatenate(self._priorities)
        keep = np.argsort(priority, kind="stable")[:self.size]
        self._priorities = [priority[keep]]
        self._chunks = [np.concatenate(self._chunks)[keep]]
        self._pending = len(keep)
        if len(keep) == self.size:
            self._threshold = float(priority[keep[-1]])

    @property
    def vectors(self) -> np.ndarray:
        if not self._chunks:
            return np.empty((0, 0), np.float32)
        self._merge()
        return self._chunks[0]


def tile_positions(batch: pa.RecordBatch) -> Dict[str, np.ndarray]:
    """Per row: epsg, tile size (m), and the tile's column and top-edge row on its zone's tile grid."""
    epsg = np.array([int(c.split(":")[-1]) for c in batch.column("crs").to_pylist()], np.int64)
    transform = vectors(batch.column("transform")).astype(np.float64)
    size = batch.column("tile_px").to_numpy().astype(np.float64) * batch.column("scale_m").to_numpy()
    if transform.shape[1] != 6 or np.any(transform[:, 1] != 0) or np.any(transform[:, 3] != 0):
        raise ValueError("tile transforms must be north-up affine grids (xShear = yShear = 0)")
    return {"epsg": epsg, "size_m": size,
            "col": np.rint(transform[:, 2] / size).astype(np.int64),
            "top": np.rint(transform[:, 5] / size).astype(np.int64)}

