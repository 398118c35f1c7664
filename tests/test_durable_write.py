"""The durable writers: a file per batch, named by its content, written atomically, rewritten (not duplicated)
when the runner retries a bundle; and `pipeline.read_embeddings` keeps one row per key whatever is on disk."""
from __future__ import annotations

import json
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from tests.fixtures import output_rows
from tiles.records import DeadLetter
from transforms import durable_write
from transforms.rows import key_of_row


def _keys_on_disk(output):
    keys = []
    for path in durable_write.embedding_files(str(output)):
        keys += [key_of_row(r) for r in pq.read_table(path, columns=["tile_id", "start_date", "end_date"]).to_pylist()]
    return keys


def test_a_file_per_batch_named_by_its_rows_and_nothing_else_in_the_folder(tmp_path):
    rows = output_rows.rows(10)
    with beam.Pipeline() as pipeline:
        written = (pipeline | beam.Create(rows, reshuffle=False)
                   | durable_write.WriteEmbeddingFiles(str(tmp_path), grid=False, run_config={"k": 1}, max_rows=4))
        assert_that(written | beam.Map(lambda w: w[1]) | beam.combiners.ToList() | beam.Map(sorted),
                    equal_to([[2, 4, 4]]))
    files = durable_write.embedding_files(str(tmp_path))
    assert len(files) == 3 and sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in files)
    assert sorted(_keys_on_disk(tmp_path)) == sorted(key_of_row(r) for r in rows)
    for path in files:  # the name is the hash of the file's sorted keys
        keys = [key_of_row(r) for r in pq.read_table(path).to_pylist()]
        assert os.path.basename(path) == durable_write.content_name("embeddings-", keys, ".parquet")
        assert keys == sorted(keys)
        assert json.loads(pq.read_schema(path).metadata[b"dynamicvis.run"]) == {"k": 1}


def test_rows_older_than_the_flush_interval_are_written_before_the_bundle_ends(tmp_path):
    """max_age_s=0: every row is due as soon as it arrives, so each is its own file (in one bundle)."""
    rows = output_rows.rows(3)
    with beam.Pipeline() as pipeline:
        _ = (pipeline | beam.Create(rows, reshuffle=False)
             | durable_write.WriteEmbeddingFiles(str(tmp_path), False, {}, max_rows=1000, max_age_s=0.0))
    assert len(durable_write.embedding_files(str(tmp_path))) == 3


class _LostAfterWriting(durable_write._WriteParquetFiles):  # noqa: SLF001
    """The worker dies right after its first file is on disk, once (a marker file survives the retry)."""

    def __init__(self, marker, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._marker = marker

    def _flush(self):
        written = super()._flush()
        if not os.path.exists(self._marker):
            open(self._marker, "w").close()
            raise RuntimeError("worker lost after writing its file")
        return written


def test_a_bundle_retried_after_its_file_was_written_leaves_no_duplicate(tmp_path):
    """BundleBasedDirectRunner retries a failed bundle, as Dataflow does: the retry rewrites the same files."""
    rows = output_rows.rows(10)
    marker, output = tmp_path / "failed-once", tmp_path / "out"
    fn = _LostAfterWriting(str(marker), str(output), False, {}, 4, 3600.0)
    with beam.Pipeline(options=PipelineOptions(runner="BundleBasedDirectRunner")) as pipeline:
        written = pipeline | beam.Create(rows) | beam.ParDo(fn)
        assert_that(written | beam.Map(lambda w: w[1]) | beam.CombineGlobally(sum), equal_to([10]))
    assert marker.exists(), "the bundle did not fail: nothing was retried"
    keys = _keys_on_disk(output)
    assert len(keys) == len(set(keys)) == 10
    assert not [name for name in os.listdir(output) if name.startswith(durable_write.TEMP_PREFIX)]


def test_dead_letters_are_a_jsonl_file_per_batch(tmp_path):
    letters = [DeadLetter(f"t{i}/2024-06-01_2024-07-01", f"t{i}", "r", "fetch", "NoScenesError", "no scenes")
               for i in range(5)]
    with beam.Pipeline() as pipeline:
        _ = pipeline | beam.Create(letters, reshuffle=False) | durable_write.WriteDeadLetters(str(tmp_path), max_rows=2)
    files = durable_write.dead_letter_files(str(tmp_path))
    assert len(files) == 3 and all(os.path.dirname(f) == str(tmp_path / "failed") for f in files)
    read = [json.loads(line) for f in files for line in open(f)]
    assert sorted(x["key"] for x in read) == sorted(x.key for x in letters)


def test_publish_is_all_or_nothing(tmp_path):
    path = str(tmp_path / "embeddings-x.parquet")
    with pytest.raises(RuntimeError):
        with durable_write.publishing(path) as handle:
            handle.write(b"half a file")
            raise RuntimeError("killed mid-write")
    assert os.listdir(tmp_path) == []
    durable_write.publish(path, b"whole")
    durable_write.publish(path, b"again")
    assert os.listdir(tmp_path) == ["embeddings-x.parquet"] and open(path, "rb").read() == b"again"


def test_publish_to_gcs_uploads_once_under_the_final_name(gcs_bucket, gcs_emulator):
    from tests.fixtures.storage import gcs_client

    rows = output_rows.rows(5)
    with beam.Pipeline() as pipeline:
        _ = (pipeline | beam.Create(rows, reshuffle=False)
             | durable_write.WriteEmbeddingFiles(gcs_bucket, False, {}, max_rows=2))
    with pytest.raises(RuntimeError):
        with durable_write.publishing(f"{gcs_bucket}/embeddings-broken.parquet") as handle:
            handle.write(b"half")
            raise RuntimeError("killed mid-write")
    bucket, prefix = gcs_bucket[len("gs://"):].split("/", 1)
    names = sorted(b.name.split("/")[-1] for b in gcs_client(gcs_emulator.url).list_blobs(bucket, prefix=prefix))
    assert len(names) == 3 and all(n.startswith("embeddings-") and n.endswith(".parquet") for n in names)
    assert "embeddings-broken.parquet" not in names
    from pipeline import read_embeddings

    assert sorted(key_of_row(r) for r in read_embeddings(gcs_bucket).to_pylist()) == \
        sorted(key_of_row(r) for r in rows)


def test_read_embeddings_returns_one_row_per_key(tmp_path):
    """Two files overlap (a bundle retried with another grouping): one row per key, the first file's."""
    from pipeline import read_embeddings

    rows = output_rows.rows(6)
    first, second = rows[:4], rows[2:]
    for part, seed in ((first, 1), (second, 2)):
        table = durable_write.rows_table(part, False, {"seed": seed})
        name = durable_write.content_name("embeddings-", map(key_of_row, part), ".parquet")
        durable_write.publish(str(tmp_path / name), durable_write.parquet_bytes(table))
    (tmp_path / ".tmp-embeddings-junk.parquet").write_bytes(b"partial")
    assert len(_keys_on_disk(tmp_path)) == 8
    table = read_embeddings(str(tmp_path))
    keys = [key_of_row(r) for r in table.to_pylist()]
    assert sorted(keys) == sorted(key_of_row(r) for r in rows) and len(keys) == len(set(keys))
    by_key = {key_of_row(r): r for r in table.to_pylist()}
    for row in rows:
        np.testing.assert_array_equal(by_key[key_of_row(row)]["embedding"], row["embedding"])
    assert read_embeddings(str(tmp_path), columns=["embedding"]).column_names == \
        ["tile_id", "start_date", "end_date", "embedding"]
    assert read_embeddings(str(tmp_path / "nothing-here")).num_rows == 0
