"""`python -m pipeline.compact`: small files become large spatially ordered shards; killed at any point it
loses and duplicates nothing (as read back one row per key), and rerunning it finishes the job."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import compact as compact_lib
from tests.fixtures import output_rows
from transforms import durable_write
from transforms.rows import key_of_row

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(shard_rows=40, row_group_rows=16, max_rows_per_pass=100)


def write_incremental(output, rows, per_file: int) -> None:
    """Files as the pipeline's durable writer makes them (same encoder, same names)."""
    os.makedirs(output, exist_ok=True)
    for start in range(0, len(rows), per_file):
        part = rows[start:start + per_file]
        name = durable_write.content_name("embeddings-", map(key_of_row, part), ".parquet")
        durable_write.publish(os.path.join(output, name),
                              durable_write.parquet_bytes(durable_write.rows_table(part, False, {"run": 1})))


def physical_keys(output):
    keys = []
    for path in durable_write.embedding_files(str(output)):
        keys += [key_of_row(r) for r in pq.read_table(path, columns=["tile_id", "start_date", "end_date"]).to_pylist()]
    return keys


def logical_keys(output):
    from pipeline import read_embeddings

    return [key_of_row(r) for r in read_embeddings(str(output), columns=[]).to_pylist()]


ROWS = output_rows.rows(150)
EXPECTED = sorted(key_of_row(r) for r in ROWS)


@pytest.fixture
def output(tmp_path):
    out = tmp_path / "out"
    write_incremental(out, ROWS, per_file=8)
    write_incremental(out, ROWS[3:10], per_file=7)  # a retried bundle grouped differently: 7 duplicate rows
    return out


def test_compaction_merges_into_spatially_ordered_shards_one_row_per_key(output):
    assert len(physical_keys(output)) == 157
    written = compact_lib.compact(str(output), **SMALL)
    files = durable_write.embedding_files(str(output))
    assert sorted(files) == sorted(written) and all(os.path.basename(f).startswith("embeddings-shard-") for f in files)
    assert sorted(physical_keys(output)) == EXPECTED
    for path in files:
        parquet = pq.ParquetFile(path)
        assert parquet.metadata.num_rows <= SMALL["shard_rows"]
        assert all(parquet.metadata.row_group(i).num_rows <= SMALL["row_group_rows"]
                   for i in range(parquet.metadata.num_row_groups))
        assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
        table = parquet.read()
        np.testing.assert_array_equal(compact_lib.spatial_order(table), np.arange(table.num_rows))  # already ordered
        geo = json.loads(parquet.schema_arrow.metadata[b"geo"])
        xmin, ymin, xmax, ymax = geo["columns"]["geometry"]["bbox"]
        boxes = table["bbox"].to_pylist()
        assert xmin == min(b["xmin"] for b in boxes) and ymax == max(b["ymax"] for b in boxes)
        assert json.loads(parquet.schema_arrow.metadata[compact_lib.RUNS_METADATA_KEY]) == [{"run": 1}]
    assert compact_lib.compact(str(output), **SMALL) == []  # nothing left to do


def test_spatial_order_groups_zones_and_keeps_neighbours_together():
    import pyarrow as pa

    rows = output_rows.rows(64)
    table = durable_write.rows_table(rows, False, None)
    ordered = table.take(compact_lib.spatial_order(table)).to_pylist()
    zones = [r["tile_id"].split("_")[0] for r in ordered]
    assert zones == sorted(zones)  # one zone after the other
    tiles = [tuple(map(int, r["tile_id"].split("_")[2:])) for r in ordered if r["tile_id"].startswith("32632")]
    distinct = list(dict.fromkeys(tiles))
    steps = [abs(a[0] - b[0]) + abs(a[1] - b[1]) for a, b in zip(distinct, distinct[1:])]
    assert max(steps) <= 3 and np.mean(steps) < 1.6, steps  # a Hilbert walk (with holes), not a raster scan
    assert pa.types.is_fixed_size_list(table.schema.field("embedding").type)


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the code under test catches it."""


def _count_operations(monkeypatch, budget=None):
    """Counts shard writes and single-file deletes; raises Killed at operation number `budget`."""
    from apache_beam.io.filesystems import FileSystems

    done = {"n": 0}
    real_write, real_delete = compact_lib._write_shard, FileSystems.delete  # noqa: SLF001

    def step():
        done["n"] += 1
        if budget is not None and done["n"] == budget:
            raise Killed()

    def write_shard(path, table, row_group_rows):
        step()
        real_write(path, table, row_group_rows)

    def delete(paths):
        for path in paths:  # one at a time, so a kill can fall between two deletes
            step()
            real_delete([path])

    monkeypatch.setattr(compact_lib, "_write_shard", write_shard)
    monkeypatch.setattr(FileSystems, "delete", delete)
    return done


def test_compaction_killed_at_any_point_loses_and_duplicates_nothing(output, tmp_path):
    import shutil

    pristine = tmp_path / "pristine"
    shutil.copytree(output, pristine)
    with pytest.MonkeyPatch.context() as counting:
        total = _count_operations(counting)
        compact_lib.compact(str(output), **SMALL)
    operations = total["n"]
    assert operations > 10
    for budget in range(1, operations + 1):
        shutil.rmtree(output)
        shutil.copytree(pristine, output)
        with pytest.MonkeyPatch.context() as killing:
            _count_operations(killing, budget)
            with pytest.raises(Killed):
                compact_lib.compact(str(output), **SMALL)
        keys = logical_keys(output)
        assert sorted(keys) == EXPECTED, f"killed at operation {budget}: rows lost or duplicated"
        compact_lib.compact(str(output), **SMALL)  # the rerun finishes the job
        names = os.listdir(output)
        assert all(n.startswith("embeddings-shard-") for n in names), (budget, names)
        assert sorted(physical_keys(output)) == EXPECTED, f"killed at operation {budget}"


@pytest.mark.slow
def test_sigkilled_compaction_process_then_rerun(tmp_path):
    output = tmp_path / "out"
    rows = output_rows.rows(1200)
    write_incremental(output, rows, per_file=8)
    expected = sorted(key_of_row(r) for r in rows)
    argv = [sys.executable, "-m", "pipeline.compact", str(output), "--shard-rows", "50", "--max-rows-per-pass", "200"]
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list(output.glob("embeddings-shard-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"compaction finished before the kill:\n{log[-2000:]}"
    assert list(output.glob("embeddings-shard-*")) and list(output.glob("embeddings-[0-9a-f]*"))
    assert sorted(logical_keys(output)) == expected
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(physical_keys(output)) == expected
    assert all(p.name.startswith(("embeddings-shard-", ".tmp-")) for p in output.iterdir())
