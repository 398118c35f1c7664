"""The output side of the pipeline, one module per job; this module re-exports their names.

    transforms.rows           inference results -> rows / dead letters
    transforms.durable_write  rows and dead letters -> durable incremental files under --output
    transforms.skip_existing  keys already in the outputs; the anti-join that drops those tiles
    transforms.bigquery       the BigQuery writer and the keys of an existing table
    transforms.manifest       manifest.json, written last
"""
from __future__ import annotations

from transforms.bigquery import (ReadExistingBigQueryKeys, WriteBigQueryRows, bigquery_keys, bigquery_row_count,
                                 bigquery_table_reference)
from transforms.durable_write import (WriteDeadLetters, WriteEmbeddingFiles, dead_letter_files, dead_letter_json,
                                      embedding_files, embedding_pattern, join_path)
from transforms.manifest import WriteManifest
from transforms.rows import (DEAD_LETTER_TAG, KEY_COLUMNS, ToRows, key_of_row, request_from_pixels,
                             row_model_metadata)
from transforms.skip_existing import DropExisting, KeysInEvery, LogResumePlan, ReadExistingKeys, Without

existing_shards = embedding_files  # the name earlier callers use
shard_pattern = embedding_pattern

__all__ = ["ToRows", "WriteEmbeddingFiles", "WriteBigQueryRows", "WriteDeadLetters", "ReadExistingKeys",
           "ReadExistingBigQueryKeys", "Without", "DropExisting", "KeysInEvery", "LogResumePlan", "key_of_row",
           "bigquery_keys", "bigquery_row_count", "bigquery_table_reference", "WriteManifest", "embedding_files",
           "existing_shards", "dead_letter_files", "dead_letter_json", "embedding_pattern", "shard_pattern",
           "join_path", "request_from_pixels", "row_model_metadata", "DEAD_LETTER_TAG", "KEY_COLUMNS"]
