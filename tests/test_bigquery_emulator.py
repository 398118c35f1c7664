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

import datetime as dt
import json

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
    """While Parquet and BigQuery hold the same rows (both writes of every run succeeded), a skip-existing rerun
    appends to BigQuery exactly the tiles it adds to Parquet."""
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


def _bq(bigquery_dataset):
    return ["--bigquery-table", bigquery_dataset.table_spec(TABLE), "--temp_location", bigquery_dataset.temp_location]


def _launch_ok(argv) -> bool:
    from pipeline.run import launch

    return launch(argv) == 0


def _manifest(output):
    return json.loads((output / "manifest.json").read_text())["counts"]


def test_bigquery_keys_equal_the_parquet_keys(fake_ee, recipe_checkpoint_b64, tmp_path, model_cache,
                                              bigquery_dataset):
    """The keys skip-existing lists from BigQuery (DATE columns come back as datetime.date) are the very keys
    of the Parquet rows and of the requests; a table that does not exist yet has none."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from transforms import write

    assert list(write.bigquery_keys(bigquery_dataset.table_spec("not_there"))) == []
    assert write.bigquery_row_count(bigquery_dataset.table_spec("not_there")) is None

    output = tmp_path / "out"
    argv = _argv(fake_ee, recipe_checkpoint_b64, output, "--bbox", BBOX_SMALL, *_bq(bigquery_dataset))
    expected, _ = _expected_requests(argv)
    assert _launch_ok(argv)

    table = bigquery_dataset.table_spec(TABLE)
    keys = list(write.bigquery_keys(table))
    assert sorted(keys) == sorted(expected) and write.bigquery_row_count(table) == len(expected)
    shards, _ = _read_rows(output)
    with beam.Pipeline() as pipeline:
        parquet = pipeline | "Parquet" >> write.ReadExistingKeys(shards)
        bigquery = pipeline | "BigQuery" >> write.ReadExistingBigQueryKeys(table)
        assert_that(parquet, equal_to(sorted(expected)), label="ParquetKeys")
        assert_that(bigquery, equal_to(sorted(expected)), label="BigQueryKeys")

    # Every spelling a DATE may be read back in gives the same key.
    row = {"tile_id": "32TMT_1_2", "start_date": dt.date(2024, 6, 1), "end_date": dt.date(2024, 7, 1)}
    for start in (dt.date(2024, 6, 1), dt.datetime(2024, 6, 1), "2024-06-01"):
        assert write.key_of_row({**row, "start_date": start}) == write.key_of_row(row) \
            == "32TMT_1_2/2024-06-01_2024-07-01"


def test_new_output_same_table_fetches_for_parquet_but_never_duplicates_bigquery(
        fake_ee, recipe_checkpoint_b64, tmp_path, model_cache, bigquery_dataset):
    """A new, empty --output with the table of an earlier run: the tiles BigQuery already has are embedded
    again for Parquet only; new tiles go to both; BigQuery never gets a row twice."""
    first_output, output = tmp_path / "first", tmp_path / "second"
    table_id = bigquery_dataset.table_id(TABLE)
    assert _launch_ok(_argv(fake_ee, recipe_checkpoint_b64, first_output, "--bbox", BBOX_SMALL, *_bq(bigquery_dataset)))
    client = bigquery_dataset.client()
    _, first = _bigquery_rows(client, table_id)

    larger = _argv(fake_ee, recipe_checkpoint_b64, output, "--bbox", BBOX, "--skip-existing", *_bq(bigquery_dataset))
    expected, _ = _expected_requests(larger)
    assert _launch_ok(larger)

    _, parquet = _read_rows(output)
    _, rows = _bigquery_rows(client, table_id)
    keys = [_key(row) for row in rows]
    assert len(keys) == len(set(keys)), "duplicate rows in BigQuery"
    assert set(keys) == set(expected) and len(first) < len(expected)
    assert sorted(_key(row) for row in parquet) == sorted(expected), "Parquet gets every tile it lacked"
    counts = _manifest(output)
    assert counts["skipped_existing"] == 0 and counts["fetch_requests"] == len(expected)
    assert counts["rows_written"] == len(expected)
    assert counts["bigquery_rows_written"] == len(expected) - len(first)

    # The same job again: both outputs have every tile, nothing is fetched or appended.
    calls = len(fake_ee.server.calls)
    assert _launch_ok(larger)
    assert len(fake_ee.server.calls) == calls
    assert len(_bigquery_rows(client, table_id)[1]) == len(expected) == len(_read_rows(output)[1])
    assert _manifest(output)["skipped_existing"] == len(expected)


def test_tiles_missing_from_bigquery_only_are_added_there_only(fake_ee, recipe_checkpoint_b64, tmp_path,
                                                               model_cache, bigquery_dataset):
    """Parquet finalized but BigQuery lacks some rows (its load failed, or the table came later): the
    skip-existing rerun fetches exactly those tiles and appends them to BigQuery, and nothing to Parquet."""
    output = tmp_path / "out"
    table_id = bigquery_dataset.table_id(TABLE)
    # First run without BigQuery: the table does not exist yet.
    assert _launch_ok(_argv(fake_ee, recipe_checkpoint_b64, output, "--bbox", BBOX_SMALL))
    _, parquet = _read_rows(output)
    assert len(parquet) == 4

    argv = _argv(fake_ee, recipe_checkpoint_b64, output, "--bbox", BBOX_SMALL, "--skip-existing",
                 *_bq(bigquery_dataset))
    assert _launch_ok(argv)
    client = bigquery_dataset.client()
    _, rows = _bigquery_rows(client, table_id)
    assert sorted(_key(row) for row in rows) == sorted(_key(row) for row in parquet)
    assert sorted(_key(row) for row in _read_rows(output)[1]) == sorted(_key(row) for row in parquet)
    counts = _manifest(output)
    assert (counts["fetch_requests"], counts["rows_written"], counts["bigquery_rows_written"]) == (4, 0, 4)

    # Two rows lost from BigQuery: the rerun fetches and appends exactly those two.
    lost = sorted(rows, key=_key)[:2]
    client.query(f"DELETE FROM `{table_id}` WHERE tile_id IN UNNEST(@tiles)", job_config=_tiles_parameter(
        [row["tile_id"] for row in lost])).result()
    assert len(_bigquery_rows(client, table_id)[1]) == 2
    calls = len(fake_ee.server.calls)
    assert _launch_ok(argv)
    assert len(fake_ee.server.calls) > calls
    _, rows = _bigquery_rows(client, table_id)
    keys = [_key(row) for row in rows]
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(_key(row) for row in parquet)
    assert len(_read_rows(output)[1]) == len(parquet), "nothing added to Parquet"
    counts = _manifest(output)
    assert (counts["skipped_existing"], counts["fetch_requests"]) == (2, 2)
    assert (counts["rows_written"], counts["bigquery_rows_written"]) == (0, 2)


def _tiles_parameter(tiles):
    from google.cloud import bigquery

    return bigquery.QueryJobConfig(query_parameters=[bigquery.ArrayQueryParameter("tiles", "STRING", tiles)])


def test_non_empty_table_without_skip_existing_is_refused_at_launch(fake_ee, recipe_checkpoint_b64, tmp_path,
                                                                    model_cache, bigquery_dataset, capsys):
    from pipeline.run import launch

    assert _launch_ok(_argv(fake_ee, recipe_checkpoint_b64, tmp_path / "first", "--bbox", BBOX_SMALL,
                           *_bq(bigquery_dataset)))
    capsys.readouterr()
    calls = len(fake_ee.server.calls)
    output = tmp_path / "second"
    assert launch(_argv(fake_ee, recipe_checkpoint_b64, output, "--bbox", BBOX_SMALL, *_bq(bigquery_dataset))) == 2
    err = capsys.readouterr().err
    assert f"--bigquery-table {bigquery_dataset.table_spec(TABLE)} already holds 4 row(s)" in err
    assert "--skip-existing" in err and "another table" in err
    assert len(fake_ee.server.calls) == calls
    assert not list(output.glob("embeddings-*.parquet"))


@pytest.mark.parametrize("problem", ["no credentials", "no connection"])
def test_bigquery_unreachable_at_launch_is_an_input_error(problem, fake_ee, recipe_checkpoint_b64, tmp_path,
                                                          monkeypatch, capsys):
    """BigQuery cannot be asked at launch: an input error naming the table and what to check, no traceback,
    before any Earth Engine request."""
    import socket

    import google.auth
    from google.auth.credentials import AnonymousCredentials

    from pipeline import run as cli

    with socket.socket() as probe:  # a free loopback port, closed again: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    if problem == "no credentials":
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
        expected = "no Application Default Credentials for BigQuery"
    else:
        monkeypatch.setattr(google.auth, "default", lambda *_a, **_k: (AnonymousCredentials(), "test-project"))
        monkeypatch.setattr(cli, "BIGQUERY_LAUNCH_TIMEOUT_S", 2.0)
        expected = "could not look the table up in BigQuery"
    calls = len(fake_ee.server.calls)
    argv = _argv(fake_ee, recipe_checkpoint_b64, tmp_path / "out", "--bbox", BBOX_SMALL, "--skip-existing",
                 "--bigquery-table", "test-project:ds.embeddings")
    assert cli.launch(argv) == 2
    err = capsys.readouterr().err
    assert f"--bigquery-table test-project:ds.embeddings: {expected}" in err
    assert "Traceback" not in err and len(fake_ee.server.calls) == calls
