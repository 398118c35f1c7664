"""Output side of the pipeline: rows, Parquet/BigQuery writers, dead letters, skip-existing and the manifest.

Output layout under `--output`:
    embeddings-<run_id>-SSSSS-of-NNNNN.parquet   one row per embedded tile (GeoParquet, run config in metadata)
    failed/dead-letters-<run_id>-SSSSS-of-NNNNN.jsonl
    manifest.json                                 the last run's configuration, versions and counts
Each run writes shards under its own run id, so a rerun never overwrites or duplicates earlier shards;
with skip-existing, tiles already in earlier shards are dropped before fetching.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

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
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                key=meta.request.key, tile_id=meta.request.tile.tile_id, request_id=meta.request.request_id,
                stage="inference", error_class=result.error_class, message=result.error_message or "",
                attempts=result.attempts))
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

def _key_of_row(row: Mapping[str, Any]) -> str:
    return schema.row_key(row["tile_id"], row["start_date"], row["end_date"])


class ReadExistingKeys(beam.PTransform):
    """Keys (tile + window) of the rows in the given Parquet shards; reads only the three key columns."""

    def __init__(self, shards: List[str]) -> None:
        super().__init__()
        self._shards = list(shards)

    def expand(self, pbegin):
        return (pbegin
                | "Shards" >> beam.Create(self._shards)
                | "ReadKeys" >> beam.io.ReadAllFromParquet(columns=["tile_id", "start_date", "end_date"])
                | "Key" >> beam.Map(_key_of_row))


class DropExisting(beam.PTransform):
    """TileRequests minus those whose key is in `existing_keys`, one request per key.

    A CoGroupByKey anti-join: scales with the output (no side input held in memory) and also removes duplicate
    requests from overlapping regions. Outputs (kept requests, number of skipped keys per key group).
    """

    SKIPPED_TAG = "skipped"

    def __init__(self, existing_keys=None) -> None:
        super().__init__()
        self._existing = existing_keys

    def expand(self, requests):
        keyed = requests | "KeyRequests" >> beam.Map(lambda r: (r.key, r))
        existing = self._existing if self._existing is not None else (
            requests.pipeline | "NoExisting" >> beam.Create([]))
        marked = existing | "MarkExisting" >> beam.Map(lambda k: (k, True))
        return ({"requests": keyed, "existing": marked}
                | "Join" >> beam.CoGroupByKey()
                | "Keep" >> beam.ParDo(_KeepMissing()).with_outputs(self.SKIPPED_TAG, main="requests"))


class _KeepMissing(beam.DoFn):
    def process(self, joined):
        _, groups = joined
        requests = list(groups["requests"])
        if not requests:
            return
        if list(groups["existing"]):
            yield beam.pvalue.TaggedOutput(DropExisting.SKIPPED_TAG, requests[0].key)
            return
        yield min(requests, key=lambda r: r.request_id)  # deterministic pick among overlapping regions


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
              "path_type", "sampling_scale", "mamba2", "pooling", "dim")
    return {name: row.get(name) for name in fields}


def request_from_pixels(pixels) -> Tuple[schema.TileMeta, Any]:
    """TilePixels -> (TileMeta, chw): the key carries everything a row needs except the embedding."""
    return (schema.TileMeta(request=pixels.request, valid_fraction=float(pixels.valid_fraction),
                            n_scenes=pixels.n_scenes), pixels.chw)


__all__ = ["ToRows", "WriteParquetShards", "WriteBigQueryRows", "WriteDeadLetters", "ReadExistingKeys",
           "DropExisting", "WriteManifest", "existing_shards", "shard_pattern", "join_path",
           "request_from_pixels", "row_model_metadata", "DEAD_LETTER_TAG"]
