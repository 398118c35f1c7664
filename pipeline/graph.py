"""Assembly of the Beam graph (the same graph on DirectRunner and Dataflow).

    PlanTiles -> DropExisting -> FetchTiles -> Reshuffle -> RunInference -> ToRows
        rows         -> embeddings-<hash>.parquet, a file per batch, durable while the job runs (+ BigQuery)
        dead letters -> failed/dead-letters-<hash>.jsonl   (fetch, inference and encode failures)
        counts       -> manifest.json             (after all writes have finished)

With --skip-existing, DropExisting drops the tiles whose key is already in every output (the Parquet files,
and the BigQuery table if one is set); with two outputs, each then gets only the rows it lacks.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, cast

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from pipeline import manifest as manifest_lib
from pipeline.spec import RunSpec
from transforms import progress, schema, write
from transforms.inference import DynamicVisModelHandler


def model_handler(spec: RunSpec) -> DynamicVisModelHandler:
    return DynamicVisModelHandler.from_settings(spec.inference)


def run_info(spec: RunSpec) -> schema.RunInfo:
    from pipeline import __version__

    return schema.RunInfo(pipeline_version=__version__, composite=spec.s2.composite,
                          cloudy_pct=float(spec.s2.cloudy_pct), pooling=spec.inference.pooling,
                          created_at=spec.created_at)


def run_configuration(spec: RunSpec) -> dict:
    """What goes in the manifest and in every shard's metadata (scrubbed of credentials)."""
    import dataclasses

    return manifest_lib.run_configuration({**spec.flags, "run_id": spec.run_id}, spec.beam_options,
                                          dataclasses.asdict(spec.inference.model))


def existing_keys(pipeline: beam.Pipeline, spec: RunSpec, existing_files: List[str]) -> Dict[str, Any]:
    """{output name: keys of the rows already there} with --skip-existing ('parquet', plus 'bigquery' with
    --bigquery-table); {} without it."""
    if not spec.out.skip_existing:
        return {}
    sinks = {"parquet": pipeline | "ExistingKeys" >> write.ReadExistingKeys(existing_files)}
    if spec.out.bigquery_table:
        sinks["bigquery"] = pipeline | "ExistingBigQueryKeys" >> write.ReadExistingBigQueryKeys(
            spec.out.bigquery_table)
    return sinks


def build(pipeline: beam.Pipeline, spec: RunSpec, existing_files: List[str],
          bigquery_temp: Optional[str] = None) -> None:
    """Add the whole embedding job to `pipeline`."""
    from transforms.fetch import DEAD_LETTER, PIXELS, FetchTiles
    from transforms.plan import PlanTiles

    output = cast(str, spec.out.output)  # None only with --dry-run, which builds no job
    plan = PlanTiles.from_settings(spec.plan, spec.s2)
    planned_tiles = plan.planned_requests  # counted from the shards PlanTiles ships: the launcher plans once
    requests = pipeline | "PlanTiles" >> plan
    sinks = existing_keys(pipeline, spec, existing_files)
    # A tile is not fetched again only if every output already has it.
    if len(sinks) > 1:
        present = sinks | "InEverySink" >> write.KeysInEvery()
    else:
        present = next(iter(sinks.values()), None)
    kept = requests | "DropExisting" >> write.DropExisting(present)
    to_fetch = kept[write.Without.KEPT_TAG] | "CountPlanned" >> beam.ParDo(
        progress.CountProgress(progress.PLANNED))
    skipped = kept[write.Without.SKIPPED_TAG] | "CountSkipped" >> beam.ParDo(
        progress.CountProgress(progress.SKIPPED))
    if spec.out.skip_existing:
        _ = (to_fetch, skipped) | "LogResumePlan" >> write.LogResumePlan(planned_tiles)

    fetched = to_fetch | "FetchTiles" >> FetchTiles(spec.s2, spec.ee)
    rows_and_letters = (fetched[PIXELS]
                        # Fetch is I/O bound and inference compute bound: do not fuse them.
                        | "Reshuffle" >> beam.Reshuffle()
                        | "KeyByTile" >> beam.Map(write.request_from_pixels)
                        | "Embed" >> RunInference(model_handler(spec).keyed())
                        | "ToRows" >> beam.ParDo(write.ToRows(run_info(spec), grid=spec.inference.grid)).with_outputs(
                            write.DEAD_LETTER_TAG, main="rows"))

    interval = spec.out.progress_interval_s
    rows = rows_and_letters.rows | "CountDone" >> beam.ParDo(
        progress.CountProgress(progress.DONE, planned_tiles, interval))
    letters = ((fetched[DEAD_LETTER], rows_and_letters[write.DEAD_LETTER_TAG])
               | "AllDeadLetters" >> beam.Flatten()
               | "CountFailed" >> beam.ParDo(progress.CountProgress(progress.FAILED, planned_tiles, interval)))

    configuration = run_configuration(spec)
    parquet_rows = bigquery_rows = rows
    if len(sinks) > 1:  # fetched because some output lacked the tile: each output gets only what it lacks
        parquet_rows = (rows | "NotInParquet" >> write.Without(sinks["parquet"]))[write.Without.KEPT_TAG]
        bigquery_rows = (rows | "NotInBigQuery" >> write.Without(sinks["bigquery"]))[write.Without.KEPT_TAG]
    # A file per inference batch (or per minute, or per bundle): rows are durable while the job runs.
    embedding_files = parquet_rows | "WriteParquet" >> write.WriteEmbeddingFiles(
        output, grid=spec.inference.grid, run_config=configuration,
        max_rows=spec.inference.max_batch_size)
    if spec.out.bigquery_table:
        _ = bigquery_rows | "WriteBigQuery" >> write.WriteBigQueryRows(spec.out.bigquery_table, bigquery_temp)
    letter_files = letters | "WriteDeadLetters" >> write.WriteDeadLetters(
        output, max_rows=spec.inference.max_batch_size)

    base = manifest_lib.base_manifest(spec.run_id, spec.created_at, configuration, {"tiles": planned_tiles})
    counted = {"fetch_requests": to_fetch, "skipped_existing": skipped}
    if "parquet" in sinks:
        counted["rows_before_run"] = sinks["parquet"]
    if spec.out.bigquery_table:
        counted["bigquery_rows_written"] = bigquery_rows
    _ = ({**counted, "model": rows | "ModelColumns" >> beam.Map(write.row_model_metadata),
          "embedding_files": embedding_files, "dead_letter_files": letter_files}
         | "WriteManifest" >> write.WriteManifest(output, base, sorted(counted)))

