"""Durable incremental output: each batch of rows (or dead letters) becomes its own file while the job runs.

Output layout under `--output`:
    embeddings-<hash>.parquet          a batch of rows (GeoParquet 1.1, ZSTD, bbox covering, run config in metadata)
    embeddings-shard-<pass>-<i>-of-<n>.parquet   a large, spatially ordered shard (`python -m pipeline.compact`)
    failed/dead-letters-<hash>.jsonl   a batch of dead letters
    manifest.json                      the last run's configuration, versions and counts

`<hash>` is derived from the sorted row keys, so a bundle that the runner retries rewrites the very same
file instead of adding a duplicate. A file appears whole or not at all: locally it is written under a
temporary name (`.tmp-*`, which no reader globs) and renamed atomically; on object stores (gs://) it is
uploaded once under its final name, and object writes are atomic. Each file is written when its buffer holds
`max_rows` rows (one inference batch), when its oldest row has waited `max_age_s`, and at the end of every
bundle, so rows become durable within about a minute (or one inference batch), whatever the runner's
bundle sizes: a job that dies keeps what it finished.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
import uuid
from typing import Any, BinaryIO, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from tiles.records import DeadLetter
from transforms import schema
from transforms.rows import key_of_row

EMBEDDINGS_PREFIX = "embeddings-"
EMBEDDINGS_SUFFIX = ".parquet"
DEAD_LETTERS_DIR = "failed"
DEAD_LETTERS_PREFIX = "dead-letters-"
DEAD_LETTERS_SUFFIX = ".jsonl"
TEMP_PREFIX = ".tmp-"          # never matches a reader's glob
FLUSH_INTERVAL_S = 60.0        # a row waits at most about this long (plus one inference batch) to be written
WrittenFile = Tuple[str, int]  # (path, rows): what the writers output, for the manifest


def join_path(base: str, *parts: str) -> str:
    return FileSystems.join(base.rstrip("/"), *parts)


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def content_name(prefix: str, keys: Iterable[str], suffix: str) -> str:
    """`prefix` + a hash of the sorted keys + `suffix`: the same rows always get the same file name."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:32]
    return f"{prefix}{digest}{suffix}"


@contextlib.contextmanager
def publishing(path: str) -> Iterator[BinaryIO]:
    """A handle whose content appears at `path` whole, when the block ends without error, or not at all
    (replacing a file of the same name): a temporary file renamed atomically, or one object upload."""
    if not is_local(path):
        # Buffered, then uploaded in one go once complete: a writer closed by an error (or by the garbage
        # collector) would finalize a partial object.
        buffer = io.BytesIO()
        yield buffer
        with FileSystems.create(path, mime_type="application/octet-stream") as handle:
            handle.write(buffer.getbuffer())
        return
    path = path[len("file://"):] if path.startswith("file://") else path
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", exist_ok=True)
    temp = os.path.join(directory, f"{TEMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}")
    try:
        with open(temp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def publish(path: str, data: bytes) -> None:
    """Make `data` appear at `path` whole or not at all."""
    with publishing(path) as handle:
        handle.write(data)


def _matching(pattern: str) -> List[Tuple[str, int]]:
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001  # no such directory / bucket prefix yet
        return []
    return sorted((m.path, m.size_in_bytes) for m in matches if m.size_in_bytes > 0)


def embedding_pattern(output: str) -> str:
    return join_path(output, f"{EMBEDDINGS_PREFIX}*{EMBEDDINGS_SUFFIX}")


def embedding_files(output: str) -> List[str]:
    """Finished embedding files directly under `output` (temporary files never match; empty objects are
    ignored)."""
    return [path for path, _ in _matching(embedding_pattern(output))]


def dead_letter_files(output: str) -> List[str]:
    return [path for path, _ in _matching(join_path(output, DEAD_LETTERS_DIR,
                                                     f"{DEAD_LETTERS_PREFIX}*{DEAD_LETTERS_SUFFIX}"))]


def open_parquet(path: str) -> pq.ParquetFile:
    """A ParquetFile on a local path or any Beam file system URI (gs://)."""
    if is_local(path):
        return pq.ParquetFile(path[len("file://"):] if path.startswith("file://") else path)
    return pq.ParquetFile(FileSystems.open(path, compression_type="uncompressed"))


def row_count(path: str) -> int:
    """Rows of a Parquet file, from its footer only."""
    return open_parquet(path).metadata.num_rows


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------

def rows_table(rows: Sequence[Mapping[str, Any]], grid: bool, run_config: Optional[Mapping[str, Any]]) -> pa.Table:
    """Rows (as `schema.encode_row` makes them), sorted by key, as a table of the output schema."""
    ordered = sorted(rows, key=key_of_row)
    dim = len(ordered[0]["embedding"]) if ordered else None
    return pa.Table.from_pylist(ordered, schema=schema.arrow_schema(grid=grid, run_config=run_config,
                                                                    embedding_dim=dim))


def parquet_bytes(table: pa.Table, row_group_rows: Optional[int] = None) -> bytes:
    """The table as a ZSTD Parquet file (statistics on: readers prune row groups by the bbox column)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=schema.PARQUET_COMPRESSION, row_group_size=row_group_rows)
    return sink.getvalue().to_pybytes()


def dead_letter_json(letter: DeadLetter) -> str:
    return json.dumps(letter.to_dict(), sort_keys=True)


# --------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------

class _BufferedFiles(beam.DoFn):
    """Buffers elements and writes them as one file when `max_rows` are buffered, when the oldest has waited
    `max_age_s` (checked as elements arrive: no timers, so it works in batch on every runner) and at the end
    of each bundle. Outputs a WrittenFile per file."""

    def __init__(self, max_rows: int, max_age_s: float) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self._max_rows = int(max_rows)
        self._max_age_s = float(max_age_s)

    def start_bundle(self) -> None:
        self._buffer: List[Any] = []
        self._first_at = 0.0

    def process(self, element):
        if not self._buffer:
            self._first_at = time.monotonic()
        self._buffer.append(element)
        if len(self._buffer) >= self._max_rows or time.monotonic() - self._first_at >= self._max_age_s:
            yield self._flush()

    def finish_bundle(self):
        if self._buffer:
            yield WindowedValue(self._flush(), GlobalWindow().max_timestamp(), [GlobalWindow()])

    def _flush(self) -> WrittenFile:
        items, self._buffer = self._buffer, []
        return self.write(items), len(items)

    def write(self, items: List[Any]) -> str:
        raise NotImplementedError


class _WriteParquetFiles(_BufferedFiles):
    def __init__(self, output: str, grid: bool, run_config: Mapping[str, Any], max_rows: int,
                 max_age_s: float) -> None:
        super().__init__(max_rows, max_age_s)
        self._output = output
        self._grid = grid
        self._run_config = dict(run_config)

    def write(self, items):
        path = join_path(self._output, content_name(EMBEDDINGS_PREFIX, map(key_of_row, items), EMBEDDINGS_SUFFIX))
        publish(path, parquet_bytes(rows_table(items, self._grid, self._run_config)))
        return path


class _WriteDeadLetterFiles(_BufferedFiles):
    def __init__(self, output: str, max_rows: int, max_age_s: float) -> None:
        super().__init__(max_rows, max_age_s)
        self._output = output

    def write(self, items):
        letters = sorted(items, key=lambda letter: (letter.key, letter.stage, letter.error_class))
        name = content_name(DEAD_LETTERS_PREFIX, (letter.key for letter in letters), DEAD_LETTERS_SUFFIX)
        path = join_path(self._output, DEAD_LETTERS_DIR, name)
        publish(path, "".join(dead_letter_json(letter) + "\n" for letter in letters).encode())
        return path


class WriteEmbeddingFiles(beam.PTransform):
    """Row dicts -> `<output>/embeddings-<hash>.parquet`, a file per batch; outputs WrittenFiles.

    Args:
        output: The run's --output, a local directory or gs:// prefix.
        grid: Rows carry feature grids (the schema's `grid` columns).
        run_config: The run's settings, recorded in each file's metadata.
        max_rows: Rows per file at most (>= 1).
        max_age_s: A buffered row waits at most about this long before its file is written (default 60 s).
    """

    def __init__(self, output: str, grid: bool, run_config: Mapping[str, Any], max_rows: int,
                 max_age_s: float = FLUSH_INTERVAL_S) -> None:
        super().__init__()
        self._fn = _WriteParquetFiles(output, grid, run_config, max_rows, max_age_s)

    def expand(self, rows):
        return rows | "WriteFiles" >> beam.ParDo(self._fn)


class WriteDeadLetters(beam.PTransform):
    """DeadLetters -> `<output>/failed/dead-letters-<hash>.jsonl`, a file per batch; outputs WrittenFiles.

    Args:
        output: The run's --output, a local directory or gs:// prefix.
        max_rows: Dead letters per file at most (>= 1).
        max_age_s: A buffered letter waits at most about this long before its file is written (default 60 s).
    """

    def __init__(self, output: str, max_rows: int, max_age_s: float = FLUSH_INTERVAL_S) -> None:
        super().__init__()
        self._fn = _WriteDeadLetterFiles(output, max_rows, max_age_s)

    def expand(self, letters):
        return letters | "WriteFiles" >> beam.ParDo(self._fn)
