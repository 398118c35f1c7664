"""BigQuery output: the file-loads writer, and the keys / row count of an existing table (skip-existing)."""
from __future__ import annotations

import logging
from typing import Iterator, Optional

import apache_beam as beam

from transforms import schema
from transforms.rows import KEY_COLUMNS, key_of_row

LOGGER = logging.getLogger(__name__)


class WriteBigQueryRows(beam.PTransform):
    """Row dicts -> BigQuery with file loads, explicit schema, partitioned by start_date, clustered by tile_id.

    Args:
        table: 'PROJECT:DATASET.TABLE' (created if missing, appended to).
        custom_gcs_temp_location: gs:// prefix for the load files; default the pipeline's temp_location.
    """

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
    three key columns); a table that does not exist yet has none.

    Args:
        table: 'PROJECT:DATASET.TABLE'.
    """

    def __init__(self, table: str) -> None:
        super().__init__()
        self._table = table

    def expand(self, pbegin):
        return (pbegin
                | "Table" >> beam.Create([self._table])
                | "ListKeys" >> beam.FlatMap(bigquery_keys))
