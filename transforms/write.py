"""Output side of the pipeline: rows, Parquet/BigQuery writers, dead letters, skip-existing and the manifest.

Output layout under `--output`:
    embeddings-<run_id>-SSSSS-of-NNNNN.parquet   one row per embedded tile (GeoParquet, run config in metadata)
    failed/dead-letters-<run_id>-SSSSS-of-NNNNN.jsonl
    manifest.json                                 the last run's configuration, versions and counts
Each run writes shards under its own run id, so a rerun never overwrites or duplicates earlier shards;
with skip-existing, tiles already in every output (the shards, and the BigQuery table if any) are dropped
before fetching, and each output gets only the rows it lacks.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import PredictionResult

from tiles.records import DeadLetter
from transforms import schema
from transforms.inference import TileEmbedding

LOGGER = logging.getLogger(__name__)
DEAD_LETTER_TAG = "dead_letter"
SHARD_PREFIX = "embeddings"
SHARD_SUFFIX = ".parquet"


def join_path(base: str, *parts: str) -> str:
    return FileSystems.join(base.rstrip("/"), *parts)


def shard_pattern(output: str) -> str:
    return join_path(output, f"{SHARD_PREFIX}-*{SHARD_SUFFIX}")


def existing_shards(output: str) -> List[str]:
    """Finished embedding shards in `output`. Beam's temp files live in beam-temp-* folders and never match;
    zero-byte objects (interrupted copies) are ignored."""
    try:
        matches = FileSystems.match([shard_pattern(output)])[0].metadata_list
    except Exception:  # pylint: disable=broad-except  # no such directory / bucket prefix yet
        return []
    return sorted(m.path for m in matches if m.size_in_bytes > 0)


# --------------------------------------------------------------------------------------------------
# Rows and dead letters
# --------------------------------------------------------------------------------------------------

class ToRows(beam.DoFn):
    """(TileMeta, PredictionResult[TileEmbedding]) -> output row dict, or a DeadLetter (stage 'inference')."""

    def __init__(self, run: schema.RunInfo, grid: bool = False) -> None:
        self._run = run
        self._grid = grid

    def process(self, keyed: Tuple[schema.TileMeta, PredictionResult]):
        meta, prediction = keyed
        result: TileEmbedding = prediction.inference if isinstance(prediction, PredictionResult) else prediction
        if not result.ok:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter.for_request(
                meta.request, "inference", result.error_message or "", result.attempts,
                error_class=result.error_class))
            return
        try:
            yield schema.encode_row(meta, result.embedding, result.metadata or {}, self._run,
                                    grid=result.grid if self._grid else None)
        except Exception as error:  # pylint: disable=broad-except
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter.for_request(meta.request, "encode", error))


def dead_letter_json(letter: DeadLetter) -> str:
    return json.dumps(letter.to_dict(), sort_keys=True)


class WriteDeadLetters(beam.PTransform):
    """DeadLetters -> `<output>/failed/dead-letters-<run_id>-*.jsonl`; outputs the written file names."""

    def __init__(self, output: str, run_id: str) -> None:
        super().__init__()
        self._prefix = join_path(output, "failed", f"dead-letters-{run_id}")

    def expand(self, letters):
        return (letters
                | "ToJson" >> beam.Map(dead_letter_json)
                | "WriteJsonl" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl"))


class WriteParquetShards(beam.PTransform):
    """Row dicts -> `<output>/embeddings-<run_id>-*.parquet`; outputs the finalized file names."""

    def __init__(self, output: str, run_id: str, grid: bool, run_config: Mapping[str, Any],
                 num_shards: int = 0) -> None:
        super().__init__()
        self._prefix = join_path(output, f"{SHARD_PREFIX}-{run_id}")
        self._schema = schema.arrow_schema(grid=grid, run_config=run_config)
        self._num_shards = num_shards

    def expand(self, rows):
        return rows | "WriteToParquet" >> beam.io.WriteToParquet(
            self._prefix, self._schema, file_name_suffix=SHARD_SUFFIX, num_shards=self._num_shards,
            codec="snappy", record_batch_size=256, row_group_buffer_size=16 * 1024 * 1024)


class WriteBigQueryRows(beam.PTransform):
    """Row dicts -> BigQuery with file loads, explicit schema, partitioned by start_date, clustered by tile_id."""

    def __init__(self, table: str, custom_gcs_temp_location: Optional[str] = None) -> None:
        super().__init__()
        self._table = table
        self._temp = custom_gcs_temp_location

    def expand(self, rows):
        return (rows
                | "ToBigQueryRow" >> beam.Map(schema.to_bigquery_row)
                | "WriteToBigQuery" >> beam.io.WriteToBigQuery(
                    self._table, schema=schema.bigquery_schema(),
                    method=beam.io.WriteToBigQuery.Method.FILE_LOADS,
                    create_disposition=beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
                    write_disposition=beam.io.BigQueryDisposition.WRITE_APPEND,
                    additional_bq_parameters=schema.bigquery_table_parameters(),
                    custom_gcs_temp_location=self._temp))


# --------------------------------------------------------------------------------------------------
# Skip-existing
# --------------------------------------------------------------------------------------------------

KEY_COLUMNS = ("tile_id", "start_date", "end_date")  # what identifies a row: tile and time window


def _as_date(value) -> dt.date:
    """A DATE as read back: datetime.date (Parquet, google-cloud-bigquery), a datetime or an ISO string."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def key_of_row(row: Mapping[str, Any]) -> str:
    """`schema.row_key` of an output row (as written, or as read back from Parquet or BigQuery)."""
    return schema.row_key(row["tile_id"], _as_date(row["start_date"]), _as_date(row["end_date"]))


def _key_of_request(request) -> str:
    return request.key


def _request_order(request) -> str:
    return request.request_id


class ReadExistingKeys(beam.PTransform):
    """Keys (tile + window) of the rows in the given Parquet shards; reads only the three key columns."""

    def __init__(self, shards: List[str]) -> None:
        super().__init__()
        self._shards = list(shards)

    def expand(self, pbegin):
        if not self._shards:
            return pbegin | "NoShards" >> beam.Create([])
        return (pbegin
                | "Shards" >> beam.Create(self._shards)
                | "ReadKeys" >> beam.io.ReadAllFromParquet(columns=list(KEY_COLUMNS))
                | "Key" >> beam.Map(key_of_row))


def bigquery_table_reference(table: str):
    """PROJECT:DATASET.TABLE (as --bigquery-table takes it) -> google.cloud.bigquery.TableReference."""
    from apache_beam.io.gcp.bigquery_tools import parse_table_reference
    from google.cloud import bigquery

    ref = parse_table_reference(table)
    return bigquery.TableReference(bigquery.DatasetReference(ref.projectId, ref.datasetId), ref.tableId)


def bigquery_client(project: str):
    """google-cloud-bigquery client (Application Default Credentials; BIGQUERY_EMULATOR_HOST is honoured)."""
    from google.cloud import bigquery

    return bigquery.Client(project=project)


def bigquery_row_count(table: str, timeout_s: float = 60.0) -> Optional[int]:
    """Rows in the BigQuery table (streaming buffer included as at least one), or None if it does not exist."""
    from google.api_core.exceptions import NotFound
    from google.cloud.bigquery import DEFAULT_RETRY

    ref = bigquery_table_reference(table)
    client = bigquery_client(ref.project)
    try:
        found = client.get_table(ref, retry=DEFAULT_RETRY.with_deadline(timeout_s), timeout=timeout_s)
    except NotFound:
        return None
    finally:
        client.close()
    return max(found.num_rows or 0, 1 if found.streaming_buffer is not None else 0)


def bigquery_keys(table: str) -> Iterator[str]:
    """Keys of the rows of a BigQuery table, listed with only the key columns; nothing if there is no table."""
    from google.api_core.exceptions import NotFound
    from google.cloud.bigquery import SchemaField

    fields = {f["name"]: f for f in schema.bigquery_schema()["fields"]}
    selected = [SchemaField(name, fields[name]["type"], mode=fields[name]["mode"]) for name in KEY_COLUMNS]
    ref = bigquery_table_reference(table)
    client = bigquery_client(ref.project)
    try:
        for row in client.list_rows(ref, selected_fields=selected, page_size=50_000):
            yield key_of_row(row)
    except NotFound:
        LOGGER.info("BigQuery table %s does not exist yet: no existing keys there", table)
    finally:
        client.close()


class ReadExistingBigQueryKeys(beam.PTransform):
    """Keys (tile + window) of the rows already in a BigQuery table, listed on a worker (tabledata.list of the
    three key columns); a table that does not exist yet has none."""

    def __init__(self, table: str) -> None:
        super().__init__()
        self._table = table

    def expand(self, pbegin):
        return (pbegin
                | "Table" >> beam.Create([self._table])
                | "ListKeys" >> beam.FlatMap(bigquery_keys))


class Without(beam.PTransform):
    """`items` minus those whose key (`key_fn(item)`) is in the `keys` PCollection, one item per key.

    A CoGroupByKey anti-join: scales with the data (no side input held in memory) and also removes duplicate
    items (e.g. requests of overlapping regions; among duplicates the least `order_fn(item)` is kept, else
    any). Outputs KEPT_TAG (the kept items) and SKIPPED_TAG (one key per key found in `keys`).
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
    among overlapping regions). Outputs KEPT_TAG (requests to fetch) and SKIPPED_TAG (keys skipped)."""

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


# --------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------

class _WriteManifest(beam.DoFn):
    def __init__(self, path: str, base: Mapping[str, Any]) -> None:
        self._path = path
        self._base = dict(base)

    def process(self, _, counts: Dict[str, int], model: List[Dict[str, Any]], shards: List[str],
                dead_letter_files: List[str]):
        manifest = dict(self._base)
        manifest["counts"] = {**manifest.get("counts", {}), **counts}
        manifest["model"] = model[0] if model else None
        manifest["files"] = {"embeddings": sorted(shards), "dead_letters": sorted(dead_letter_files)}
        manifest["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
        with FileSystems.create(self._path, mime_type="application/json") as handle:
            handle.write(json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
        yield self._path


class WriteManifest(beam.PTransform):
    """Writes `<output>/manifest.json` once all writes have finished: `base` plus counts, model and files.

    Applied to a dict of PCollections: each name in `counted` is counted; 'model' holds model-metadata
    dicts (one is kept); 'shards' and 'dead_letter_files' are the finalized file names of the writers,
    which also makes the manifest the last thing written.
    """

    def __init__(self, output: str, base: Mapping[str, Any], counted: List[str]) -> None:
        super().__init__()
        self._path = join_path(output, "manifest.json")
        self._base = base
        self._counted = list(counted)

    def expand(self, inputs: Dict[str, Any]):
        counted = [inputs[name] | f"Count_{name}" >> beam.combiners.Count.Globally()
                   | f"Name_{name}" >> beam.Map(lambda n, name=name: (name, n)) for name in self._counted]
        counts = counted | "Counts" >> beam.Flatten()
        model = (inputs["model"] | "OneModelMeta" >> beam.combiners.Sample.FixedSizeGlobally(1)
                 | "Unlist" >> beam.FlatMap(lambda xs: xs))
        return (inputs["model"].pipeline
                | "Once" >> beam.Create([None])
                | "WriteManifestJson" >> beam.ParDo(
                    _WriteManifest(self._path, self._base),
                    counts=beam.pvalue.AsDict(counts), model=beam.pvalue.AsList(model),
                    shards=beam.pvalue.AsList(inputs["shards"]),
                    dead_letter_files=beam.pvalue.AsList(inputs["dead_letter_files"])))


def row_model_metadata(row: Mapping[str, Any]) -> Dict[str, Any]:
    """The model columns of a row, for the manifest."""
    fields = ("model", "arch", "checkpoint_repo", "checkpoint_file", "checkpoint_sha256", "img_size",
              "path_type", "sampling_scale", "mamba2", "pooling", "precision", "dim")
    return {name: row.get(name) for name in fields}


def request_from_pixels(pixels) -> Tuple[schema.TileMeta, Any]:
    """TilePixels -> (TileMeta, chw): the key carries everything a row needs except the embedding."""
    return (schema.TileMeta(request=pixels.request, valid_fraction=float(pixels.valid_fraction),
                            n_scenes=pixels.n_scenes), pixels.chw)


__all__ = ["ToRows", "WriteParquetShards", "WriteBigQueryRows", "WriteDeadLetters", "ReadExistingKeys",
           "ReadExistingBigQueryKeys", "Without", "DropExisting", "KeysInEvery", "key_of_row", "bigquery_keys",
           "bigquery_row_count", "bigquery_table_reference", "WriteManifest", "existing_shards", "shard_pattern",
           "join_path", "request_from_pixels", "row_model_metadata", "DEAD_LETTER_TAG"]
