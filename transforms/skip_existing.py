"""Skip-existing: the keys already in the outputs, and the anti-join that drops those tiles before fetching."""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, List, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from transforms.durable_write import open_parquet
from transforms.rows import KEY_COLUMNS, key_of_row

LOGGER = logging.getLogger("dynamicvis")


def table_keys(table: pa.Table) -> pa.Array:
    """`schema.row_key` of every row of a table (or record batch) with the key columns, vectorized."""
    window = pc.binary_join_element_wise(pc.cast(table["start_date"], pa.string()),
                                         pc.cast(table["end_date"], pa.string()), "_")
    return pc.binary_join_element_wise(table["tile_id"], window, "/")


def file_keys(path: str, batch_rows: int = 65_536) -> Iterator[pa.Array]:
    """Keys of one Parquet file, a record batch at a time; only the key columns are read."""
    for batch in open_parquet(path).iter_batches(batch_size=batch_rows, columns=list(KEY_COLUMNS)):
        yield table_keys(batch)


def _keys_of_file(path: str) -> Iterator[str]:
    for keys in file_keys(path):
        yield from keys.to_pylist()


class ReadExistingKeys(beam.PTransform):
    """Keys (tile + window) of the rows in the given Parquet files; reads only the three key columns, one
    record batch at a time (memory bounded by the batch, whatever the number of rows).

    Args:
        files: Parquet files (local or gs://), e.g. `embedding_files(output)`.
    """

    def __init__(self, files: List[str]) -> None:
        super().__init__()
        self._files = list(files)

    def expand(self, pbegin):
        if not self._files:
            return pbegin | "NoFiles" >> beam.Create([])
        return (pbegin
                | "Files" >> beam.Create(self._files)
                | "SpreadFiles" >> beam.Reshuffle()
                | "ReadKeys" >> beam.FlatMap(_keys_of_file))


def _key_of_request(request) -> str:
    return request.key


def _request_order(request) -> str:
    return request.request_id


class Without(beam.PTransform):
    """`items` minus those whose key (`key_fn(item)`) is in the `keys` PCollection, one item per key.

    A CoGroupByKey anti-join: scales with the data (no side input held in memory) and also removes duplicate
    items (e.g. requests of overlapping regions; among duplicates the least `order_fn(item)` is kept, else
    any). Outputs KEPT_TAG (the kept items) and SKIPPED_TAG (one key per key found in `keys`).

    Args:
        keys: PCollection of keys to drop; default none (only duplicates are removed).
        key_fn: item -> key; default `key_of_row`.
        order_fn: item -> sort key choosing which duplicate is kept; default any.
    """

    KEPT_TAG = "kept"
    SKIPPED_TAG = "skipped"

    def __init__(self, keys=None, key_fn: Callable[[Any], str] = key_of_row,
                 order_fn: Optional[Callable[[Any], Any]] = None) -> None:
        super().__init__()
        self._keys = keys
        self._key_fn = key_fn
        self._order_fn = order_fn

    def expand(self, items):
        keyed = items | "KeyItems" >> beam.Map(lambda item, key_fn: (key_fn(item), item), self._key_fn)
        keys = self._keys if self._keys is not None else (items.pipeline | "NoKeys" >> beam.Create([]))
        marked = keys | "MarkKeys" >> beam.Map(lambda key: (key, True))
        return ({"items": keyed, "keys": marked}
                | "Join" >> beam.CoGroupByKey()
                | "Keep" >> beam.ParDo(_KeepMissing(self._order_fn)).with_outputs(self.SKIPPED_TAG,
                                                                                   main=self.KEPT_TAG))


class _KeepMissing(beam.DoFn):
    def __init__(self, order_fn: Optional[Callable[[Any], Any]] = None) -> None:
        self._order_fn = order_fn

    def process(self, joined):
        key, groups = joined
        items = list(groups["items"])
        if not items:
            return
        if any(True for _ in groups["keys"]):
            yield beam.pvalue.TaggedOutput(Without.SKIPPED_TAG, key)
            return
        yield min(items, key=self._order_fn) if self._order_fn else items[0]  # deterministic among overlaps


class DropExisting(Without):
    """TileRequests minus those whose key is in `existing_keys`, one request per key (the least request_id
    among overlapping regions). Outputs KEPT_TAG (requests to fetch) and SKIPPED_TAG (keys skipped).

    Args:
        existing_keys: PCollection of keys already in the outputs; default none.
    """

    def __init__(self, existing_keys=None) -> None:
        super().__init__(existing_keys, key_fn=_key_of_request, order_fn=_request_order)


class KeysInEvery(beam.PTransform):
    """Applied to {name: keys PCollection}: the keys present in every one of them (a CoGroupByKey
    intersection), each once."""

    def expand(self, named_keys):
        marked = {name: keys | f"Mark_{name}" >> beam.Map(lambda key: (key, True))
                  for name, keys in named_keys.items()}
        return (marked
                | "Join" >> beam.CoGroupByKey()
                | "InEvery" >> beam.FlatMap(_key_if_in_every))


def _key_if_in_every(joined):
    key, groups = joined
    if all(any(True for _ in group) for group in groups.values()):
        yield key


def _log_plan(_, fetching: int, skipped: int, planned: int) -> None:
    LOGGER.info("skip-existing: %d of %d planned tiles already in the output; fetching %d", skipped, planned,
                fetching)


class LogResumePlan(beam.PTransform):
    """Applied to (to_fetch, skipped): logs once how many planned tiles are already there and how many are
    fetched (after the anti-join, before the first fetch completes on batch runners).

    Args:
        planned: Tiles planned in all.
    """

    def __init__(self, planned: int) -> None:
        super().__init__()
        self._planned = planned

    def expand(self, pcolls):
        to_fetch, skipped = pcolls
        fetching = to_fetch | "CountFetching" >> beam.combiners.Count.Globally()
        skipping = skipped | "CountSkipped" >> beam.combiners.Count.Globally()
        return (to_fetch.pipeline
                | "Once" >> beam.Create([None])
                | "Log" >> beam.Map(_log_plan, fetching=beam.pvalue.AsSingleton(fetching),
                                    skipped=beam.pvalue.AsSingleton(skipping), planned=self._planned))
