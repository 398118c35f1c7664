"""`python -m pipeline.compact OUTPUT`: merge the small incremental files of an output into large, spatially
ordered GeoParquet shards, without ever losing or duplicating a row.

A pass takes up to `--max-rows-per-pass` rows of incremental files (`embeddings-<hash>.parquet`), keeps one
row per key, orders the rows by UTM zone, then by the Hilbert index of the tile position, then by window,
and writes them as `embeddings-shard-<pass>-<i>-of-<n>.parquet` (ZSTD, row groups of `--row-group-rows`,
file bbox in the `geo` metadata). Each shard records its pass, the number of shards of the pass and the
pass's input files in its metadata. The inputs are deleted only once every shard of the pass is complete.

Killed at any point, nothing is lost (an input disappears only after its rows are in complete shards) and
readers that keep one row per key (`pipeline.read_embeddings`, skip-existing) see every row once. The next
run finishes the job: it deletes the inputs of complete passes, drops the shards of incomplete ones (their
rows are still in their inputs) and compacts what is left. Do not compact an output a job is writing to.

Memory: the keys of all files (for one row per key across passes) plus one pass's rows, decoded, a few times
over while they are sorted and encoded; lower `--max-rows-per-pass` on a small machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

LOGGER = logging.getLogger("dynamicvis.compact")
SHARD_PREFIX = "embeddings-shard-"
COMPACTION_METADATA_KEY = b"dynamicvis.compaction"
RUNS_METADATA_KEY = b"dynamicvis.runs"
SHARD_ROWS = 131_072       # ~0.5 GB per shard with 768-d embeddings
ROW_GROUP_ROWS = 16_384    # ~64 MB row groups: large enough to scan fast, small enough to prune by bbox
MAX_ROWS_PER_PASS = 262_144
HILBERT_ORDER = 24         # tile indices below 2**24: 8 px tiles of 1 m still cover 16 000 km


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    path: str
    pass_id: str
    index: int
    count: int
    inputs: List[str]


def shard_info(path: str) -> Optional[ShardInfo]:
    """What a shard's footer says about the pass that wrote it (None for a file that is not a shard)."""
    from transforms.durable_write import open_parquet

    metadata = open_parquet(path).schema_arrow.metadata or {}
    if COMPACTION_METADATA_KEY not in metadata:
        return None
    info = json.loads(metadata[COMPACTION_METADATA_KEY])
    return ShardInfo(path, info["pass"], int(info["index"]), int(info["count"]), list(info["inputs"]))


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------------
# Spatial order
# --------------------------------------------------------------------------------------------------

def hilbert_index(x: np.ndarray, y: np.ndarray, order: int) -> np.ndarray:
    """Index along the Hilbert curve of a 2**order square of the integer points (x, y), vectorized."""
    x = x.astype(np.int64).copy()
    y = y.astype(np.int64).copy()
    d = np.zeros_like(x)
    n = 1 << order
    s = n >> 1
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx) ^ ry)
        # Rotate the quadrant so that the curve continues where the previous level left off.
        flip = ~ry & rx
        x = np.where(flip, n - 1 - x, x)
        y = np.where(flip, n - 1 - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s >>= 1
    return d


def spatial_order(table: pa.Table) -> np.ndarray:
    """Row order: grid (EPSG zone, tile size, scale) first, then the Hilbert index of (ix, iy), then window."""
    parts = pc.split_pattern(table["tile_id"], "_")
    grid = pc.binary_join_element_wise(pc.list_element(parts, 0), pc.list_element(parts, 1), "_")
    ix = pc.cast(pc.list_element(parts, 2), pa.int64()).to_numpy(zero_copy_only=False)
    iy = pc.cast(pc.list_element(parts, 3), pa.int64()).to_numpy(zero_copy_only=False)
    # A fixed curve over the whole grid (tile indices are >= 0 and < 2**HILBERT_ORDER), so that any subset of
    # rows sorts the same way.
    keyed = pa.table({"grid": grid, "h": hilbert_index(ix, iy, HILBERT_ORDER), "start": table["start_date"],
                      "end": table["end_date"]})
    return pc.sort_indices(keyed, sort_keys=[("grid", "ascending"), ("h", "ascending"), ("start", "ascending"),
                                             ("end", "ascending")]).to_numpy()


# --------------------------------------------------------------------------------------------------
# One pass
# --------------------------------------------------------------------------------------------------

def _shard_metadata(table: pa.Table, base: Dict[bytes, bytes], runs: List[dict], info: dict) -> Dict[bytes, bytes]:
    from transforms import schema

    metadata = {k: v for k, v in base.items() if k not in (schema.RUN_METADATA_KEY, b"ARROW:schema")}
    geo = json.loads(metadata[schema.GEO_METADATA_KEY])
    bbox = table[schema.BBOX_COLUMN]
    geo["columns"][schema.GEOMETRY_COLUMN]["bbox"] = [
        pc.min(pc.struct_field(bbox, "xmin")).as_py(), pc.min(pc.struct_field(bbox, "ymin")).as_py(),
        pc.max(pc.struct_field(bbox, "xmax")).as_py(), pc.max(pc.struct_field(bbox, "ymax")).as_py()]
    metadata[schema.GEO_METADATA_KEY] = json.dumps(geo).encode()
    metadata[RUNS_METADATA_KEY] = json.dumps(runs, sort_keys=True).encode()
    metadata[COMPACTION_METADATA_KEY] = json.dumps(info, sort_keys=True).encode()
    return metadata


def _write_shard(path: str, table: pa.Table, row_group_rows: int) -> None:
    from transforms import schema
    from transforms.durable_write import publishing

    with publishing(path) as handle:
        pq.write_table(table, handle, compression=schema.PARQUET_COMPRESSION, row_group_size=row_group_rows)


def first_occurrences(shards: Sequence[str], inputs: Sequence[str]) -> Dict[str, np.ndarray]:
    """For each input file, which of its rows to keep: those whose key is in no shard and in no earlier row
    of the inputs (in file name order). Reads key columns only."""
    from transforms.skip_existing import file_keys

    def keys_of(paths):
        arrays = [keys for path in paths for keys in file_keys(path)]
        return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())

    counts, chunks = [], []
    for path in inputs:
        keys = keys_of([path])
        counts.append(len(keys))
        chunks.append(keys)
    keys = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
    index = pa.table({"key": keys, "i": pa.array(np.arange(len(keys), dtype=np.int64))})
    keep = np.zeros(len(keys), dtype=bool)
    keep[index.group_by("key", use_threads=False).aggregate([("i", "min")])["i_min"].to_numpy()] = True
    if shards:
        keep &= ~pc.is_in(keys, value_set=keys_of(shards)).to_numpy(zero_copy_only=False)
    bounds = np.cumsum([0, *counts])
    return {path: keep[bounds[i]:bounds[i + 1]] for i, path in enumerate(inputs)}


def compact_pass(output: str, inputs: Sequence[str], keep: Mapping[str, np.ndarray], shard_rows: int,
                 row_group_rows: int) -> List[str]:
    """Merge the kept rows of `inputs` into shards under `output`; deletes the inputs once every shard is
    written."""
    from apache_beam.io.filesystems import FileSystems

    from transforms.durable_write import join_path, open_parquet

    inputs = sorted(inputs)
    names = [_name(path) for path in inputs]
    pass_id = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    files = [open_parquet(path) for path in inputs]
    runs = sorted({(f.schema_arrow.metadata or {}).get(b"dynamicvis.run", b"null").decode() for f in files})
    base = dict(files[0].schema_arrow.metadata or {})
    table = pa.concat_tables([f.read().filter(pa.array(keep[path])) for f, path in zip(files, inputs)],
                             promote_options="permissive")
    table = table.take(spatial_order(table))
    count = max(1, -(-table.num_rows // shard_rows))
    written = []
    for index in range(count):
        part = table.slice(index * shard_rows, shard_rows)
        info = {"pass": pass_id, "index": index, "count": count, "inputs": names}
        part = part.replace_schema_metadata(_shard_metadata(part, base, [json.loads(r) for r in runs], info))
        path = join_path(output, f"{SHARD_PREFIX}{pass_id}-{index:05d}-of-{count:05d}.parquet")
        _write_shard(path, part, row_group_rows)
        written.append(path)
    FileSystems.delete(list(inputs))  # only now: every row of the inputs is in a complete shard
    LOGGER.info("compacted %d file(s), %d rows, into %d shard(s)", len(inputs), table.num_rows, count)
    return written


def _finish_earlier_passes(output: str, files: List[str]) -> List[str]:
    """Deletes the leftover inputs of complete passes and the shards of incomplete ones; returns the files
    still to compact."""
    from apache_beam.io.filesystems import FileSystems

    from transforms.durable_write import join_path

    shards = [info for info in (shard_info(path) for path in files if _name(path).startswith(SHARD_PREFIX))
              if info is not None]
    passes: Dict[str, List[ShardInfo]] = {}
    for info in shards:
        passes.setdefault(info.pass_id, []).append(info)
    present = {_name(path) for path in files}
    covered, partial = set(), []
    for pass_shards in passes.values():
        if {s.index for s in pass_shards} == set(range(pass_shards[0].count)):
            covered.update(pass_shards[0].inputs)
        else:
            partial += [s.path for s in pass_shards]
    leftover = sorted(covered & present)
    if leftover:
        LOGGER.info("deleting %d input(s) of an earlier, complete compaction", len(leftover))
        FileSystems.delete([join_path(output, name) for name in leftover])
    if partial:
        LOGGER.info("deleting %d shard(s) of an interrupted compaction (their rows are in its inputs)",
                    len(partial))
        FileSystems.delete(partial)
    return [path for path in files if not _name(path).startswith(SHARD_PREFIX) and _name(path) not in covered]


def compact(output: str, shard_rows: int = SHARD_ROWS, row_group_rows: int = ROW_GROUP_ROWS,
            max_rows_per_pass: int = MAX_ROWS_PER_PASS) -> List[str]:
    """Compact `output` in passes (see the module docstring); safe to rerun after a kill.

    Args:
        output: The pipeline's --output, a local directory or gs:// prefix; no job may be writing to it.
        shard_rows: Rows per shard (default 131 072).
        row_group_rows: Rows per Parquet row group (default 16 384).
        max_rows_per_pass: Rows of incremental files held in memory per pass (default 262 144).

    Returns:
        The paths of the shards written (empty when there was nothing to compact).
    """
    from transforms.durable_write import embedding_files

    todo = sorted(_finish_earlier_passes(output, embedding_files(output)))
    shards = [path for path in embedding_files(output) if _name(path).startswith(SHARD_PREFIX)]
    keep = first_occurrences(shards, todo)
    written: List[str] = []
    group: List[str] = []
    rows = 0
    for path in todo:
        n = int(keep[path].sum())
        if group and rows + n > max_rows_per_pass:
            written += compact_pass(output, group, keep, shard_rows, row_group_rows)
            group, rows = [], 0
        group.append(path)
        rows += n
    if group:
        written += compact_pass(output, group, keep, shard_rows, row_group_rows)
    return written


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compact", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the --output of the pipeline (local directory or gs://bucket/prefix)")
    parser.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help=f"rows per shard (default {SHARD_ROWS})")
    parser.add_argument("--row-group-rows", type=int, default=ROW_GROUP_ROWS,
                        help=f"rows per row group (default {ROW_GROUP_ROWS})")
    parser.add_argument("--max-rows-per-pass", type=int, default=MAX_ROWS_PER_PASS,
                        help=f"rows held in memory at once (default {MAX_ROWS_PER_PASS})")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser_ = parser()
    args = parser_.parse_args(argv)
    for name in ("shard_rows", "row_group_rows", "max_rows_per_pass"):
        if getattr(args, name) < 1:
            parser_.error(f"--{name.replace('_', '-')} must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    written = compact(args.output.rstrip("/"), args.shard_rows, args.row_group_rows, args.max_rows_per_pass)
    print(f"compacted into {len(written)} shard(s)" if written else "nothing to compact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
