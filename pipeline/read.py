"""Reading an output directory back: one row per key, whatever files (incremental or compacted) it holds."""
from __future__ import annotations

from typing import List, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from transforms.rows import KEY_COLUMNS


def dedup_by_key(table: pa.Table) -> pa.Table:
    """The first row of each key (tile + window), in table order; a table without duplicates comes back as is."""
    from transforms.skip_existing import table_keys

    keys = table_keys(table.select(list(KEY_COLUMNS)))
    if pc.count_distinct(keys).as_py() == len(keys):
        return table
    index = pa.table({"key": keys, "i": pa.array(range(len(keys)), pa.int64())})
    first = index.group_by("key", use_threads=False).aggregate([("i", "min")])["i_min"]
    return table.take(pc.take(first, pc.sort_indices(first)))


def read_embeddings(path: str, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """All embedding rows under `path` (a local directory or gs:// prefix, as given to --output), one row per
    key: `embeddings-*.parquet` files only (never temporary files, dead letters or the manifest).

    Where a key is in several files (a batch retried with a different grouping, two jobs writing to one
    output) the row of the first file in name order is kept.

    Args:
        path: The output, a local directory or gs:// prefix.
        columns: Only these columns (the key columns are always read); default all.

    Returns:
        A pyarrow Table in the output schema (`transforms.schema`), one row per key; empty (with the schema)
        when `path` holds no embedding files.
    """
    from transforms.durable_write import embedding_files, open_parquet

    files = embedding_files(path)
    wanted: Optional[List[str]] = None
    if columns is not None:
        wanted = list(dict.fromkeys([*KEY_COLUMNS, *columns]))
    tables = [open_parquet(f).read(columns=wanted) for f in files]
    if not tables:
        from transforms import schema

        empty = schema.arrow_schema().empty_table()
        return empty.select(wanted) if wanted else empty
    table = pa.concat_tables(tables, promote_options="permissive")
    return dedup_by_key(table)
