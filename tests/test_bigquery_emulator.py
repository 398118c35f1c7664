"""The BigQuery path end to end against a real emulator, offline.

`python -m pipeline` (its `launch` entry) runs on DirectRunner against the fake Earth Engine server with
`--bigquery-table` and a gs:// `--temp_location`: the production `WriteBigQueryRows` (FILE_LOADS, explicit
schema, partitioning and clustering) writes its JSON temp files through a GCS emulator, and Beam's own
BigQuery client submits the load job to bqemulator, which reads those files (see tests/fixtures/storage.py).
The table is then read back with google-cloud-bigquery and compared with the Parquet shards of the same run.

What the emulator cannot show: it creates the table from the load job's schema but does not apply the
load job's partitioning and clustering to it, so those are checked on the load job the emulator received.
GEOGRAPHY works here without DuckDB's spatial extension (DuckDB >= 2.0 has GEOMETRY in its core); the
column keeps the production type and is compared as geometry (WKT read back vs WKB in Parquet).
"""
from __future__ import annotations

import numpy as np
import pytest
import shapely

from tests.test_pipeline_e2e import BBOX, _argv, _expected_requests, _read_rows

BBOX_SMALL = "8.0,47.0,8.003,47.002"   # 4 tiles of 320 m
TABLE = "embeddings"

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")  # emulator internals


def _key(row) -> str:
    return f"{row['tile_id']}/{row['start_date']}_{row['end_date']}"


def _bigquery_rows(client, table_id):
    table = client.get_table(table_id)
    return table, [dict(row.items()) for row in client.list_rows(table)]


def _load_jobs(client, table_id):
    project, dataset, table = table_id.split(".")
    return [job for job in client.list_jobs(all_users=True) if job.job_type == "load"
            and (job.destination.project, job.destination.dataset_id, job.destination.table_id)
            == (project, dataset, table)]


def test_bigquery_rows_equal_the_parquet_rows(fake_ee, recipe_checkpoint_b64, tmp_path, model_cache,
                                              bigquery_dataset):
    from google.cloud import bigquery

    from pipeline.run import launch
    from transforms import schema

    output = tmp_path / "out"
    table_id = bigquery_dataset.table_id(TABLE)
    argv = _argv(fake_ee, recipe_checkpoint_b64, output, "--bbox", BBOX_SMALL,
                 "--bigquery-table", bigquery_dataset.table_spec(TABLE),
                 "--temp_location", bigquery_dataset.temp_location)
    expected, _ = _expected_requests(argv)
    assert launch(argv) == 0

    _, parquet = _read_rows(output)
    client = bigquery_dataset.client()
    table, rows = _bigquery_rows(client, table_id)

    # One row per embedded tile, the same tiles as the Parquet shards.
    keys = [_key(row) for row in rows]
    assert len(keys) == len(set(keys)) == len(parquet) == len(expected) == 4
    assert set(keys) == {_key(row) for row in parquet} == set(expected)
    assert table.num_rows == len(rows)

    # The table has the production schema: names, types, modes and descriptions, in order.
    got_schema = [(f.name, f.field_type, f.mode, f.description) for f in table.schema]
    want_schema = [(f["name"], f["type"], f["mode"], f["description"]) for f in schema.bigquery_schema()["fields"]]
    assert got_schema == want_schema
    fields = {f.name: f for f in table.schema}
    assert (fields["embedding"].field_type, fields["embedding"].mode) == ("FLOAT64", "REPEATED")
    assert fields[schema.GEOMETRY_COLUMN].field_type == "GEOGRAPHY"

    # Every column equals the Parquet row's value; the embedding exactly (float32 widened to FLOAT64).
    by_key = {_key(row): row for row in parquet}
    for row in rows:
        want = by_key[_key(row)]
        for name in (f["name"] for f in schema.bigquery_schema()["fields"]):
            if name == schema.GEOMETRY_COLUMN:
                continue
            assert row[name] == want[name], name
        np.testing.assert_array_equal(np.asarray(row["embedding"], np.float64),
                                      np.asarray(want["embedding"], np.float32).astype(np.float64))
        assert len(row["embedding"]) == row["dim"] > 0
        footprint = shapely.from_wkb(want[schema.GEOMETRY_COLUMN])
        assert shapely.from_wkt(row[schema.GEOMETRY_COLUMN]).equals_exact(footprint, 0.0)

    # The load job Beam sent: JSON files from the temp location, explicit schema, partitioning, clustering.
    (job,) = _load_jobs(client, table_id)
    assert job.state == "DONE" and job.error_result is None
    assert job.source_format == "NEWLINE_DELIMITED_JSON"
    assert job.source_uris and all(uri.startswith(bigquery_dataset.temp_location + "/") for uri in job.source_uris)
    assert job.create_disposition == "CREATE_IF_NEEDED" and job.write_disposition == "WRITE_APPEND"
    assert job.time_partitioning == bigquery.TimePartitioning(type_="DAY", field="start_date")
    assert job.clustering_fields == ["tile_id"]
    assert [(f.name, f.field_type, f.mode) for f in job.schema] == [s[:3] for s in want_schema]
    # bqemulator does not carry load-job partitioning/clustering over to the table it creates; where an
    # emulator does, they must be the production ones.
    if table.time_partitioning is not None:
        assert table.time_partitioning == bigquery.TimePartitioning(type_="DAY", field="start_date")
    if table.clustering_fields is not None:
        assert table.clustering_fields == ["tile_id"]


def test_skip_existing_rerun_appends_only_the_new_tiles(fake_ee, recipe_checkpoint_b64, tmp_path, model_cache,
                                                        bigquery_dataset):
    """Skip-existing reads keys from the Parquet output only; while Parquet and BigQuery hold the same rows
    (both writes of every run succeeded), a rerun appends to BigQuery exactly the tiles it adds to Parquet."""
    from pipeline.run import launch

    output = tmp_path / "out"
    table_id = bigquery_dataset.table_id(TABLE)
    bq = ["--bigquery-table", bigquery_dataset.table_spec(TABLE), "--temp_location", bigquery_dataset.temp_location]
    assert launch(_argv(fake_ee, recipe_checkpoint_b64, output, "--bbox", BBOX_SMALL, *bq)) == 0
    client = bigquery_dataset.client()
    _, first = _bigquery_rows(client, table_id)

    larger = _argv(fake_ee, recipe_checkpoint_b64, output, "--bbox", BBOX, "--skip-existing", *bq)
    expected, _ = _expected_requests(larger)
    assert launch(larger) == 0

    _, parquet = _read_rows(output)
    _, rows = _bigquery_rows(client, table_id)
    keys = [_key(row) for row in rows]
    assert len(first) < len(rows) and len(keys) == len(set(keys)), "duplicate rows in BigQuery"
    assert set(keys) == {_key(row) for row in parquet} == set(expected)
    assert len(_load_jobs(client, table_id)) == 2
