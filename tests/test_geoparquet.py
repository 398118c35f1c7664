"""GeoParquet that tools love, on real pipeline output: `geoparquet-validator` (OGC abstract tests and the 1.1
community rules) passes core + covering on the incremental files and core + covering + distribution on the
compacted shards; DuckDB answers a bbox query from the covering column; geopandas reads the files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import shapely

from tests.test_pipeline_e2e import _argv, _expected_requests

BBOX = "8.0,47.0,8.012,47.008"  # 4 x 4 tiles of 320 m
VALIDATOR = shutil.which("geoparquet-validator") or os.path.join(os.path.dirname(sys.executable),
                                                                 "geoparquet-validator")


def verdicts(path) -> dict:
    """{class: 'conformant' | 'NOT CONFORMANT' | 'not claimed'} from the validator's report."""
    proc = subprocess.run([VALIDATOR, "check", "--json", str(path)], capture_output=True, text=True, timeout=120)
    outcomes = json.loads(proc.stdout)["outcomes"]
    found = {}
    for name in ("core", "covering", "distribution"):
        statuses = [o["status"] for o in outcomes if o["id"].startswith(f"/conf/{name}/")]
        found[name] = ("NOT CONFORMANT" if "fail" in statuses else "conformant" if "pass" in statuses
                       else "not claimed")
        exit_code = subprocess.run([VALIDATOR, "check", "--class", name, str(path)], capture_output=True,
                                   timeout=120).returncode
        assert (exit_code == 0) == (found[name] != "NOT CONFORMANT"), (name, exit_code, outcomes)
    return found


@pytest.mark.slow
def test_validator_duckdb_and_geopandas_on_pipeline_output(fake_ee, recipe_checkpoint_b64, model_cache, tmp_path):
    import duckdb
    import geopandas

    from pipeline import compact, read_embeddings
    from pipeline.run import launch
    from transforms.durable_write import embedding_files

    output = tmp_path / "out"
    argv = _argv(fake_ee, recipe_checkpoint_b64, output, "--bbox", BBOX, "--max-batch-size", "4")
    assert launch(argv) == 0
    expected, _ = _expected_requests(argv)
    incremental = embedding_files(str(output))
    assert len(incremental) >= 4
    report = {}
    for path in incremental:
        found = verdicts(path)
        assert found["core"] == "conformant" and found["covering"] == "conformant", (path, found)
        report.setdefault("incremental", found)
    schema = pq.read_schema(incremental[0])
    assert str(schema.field("embedding").type).startswith("fixed_size_list<element: float>")
    assert pq.ParquetFile(incremental[0]).metadata.row_group(0).column(0).compression == "ZSTD"

    compacted = tmp_path / "compacted"
    shutil.copytree(output, compacted)
    shards = compact.compact(str(compacted), shard_rows=8, row_group_rows=4)
    assert len(shards) >= 2
    for path in shards:
        found = verdicts(path)
        assert found == {"core": "conformant", "covering": "conformant", "distribution": "conformant"}, (path, found)
        report.setdefault("compacted", found)
    print(f"\ngeoparquet-validator: {report}")

    # DuckDB: the tiles intersecting a box, from the covering column alone, equal the footprints' answer.
    west, south, east, north = 8.004, 47.002, 8.009, 47.005
    files = [str(p) for p in embedding_files(str(compacted))]
    query = (f"SELECT tile_id, start_date FROM read_parquet({files!r}) WHERE bbox.xmin <= {east} AND "
             f"bbox.xmax >= {west} AND bbox.ymin <= {north} AND bbox.ymax >= {south}")
    got = sorted((t, str(d)) for t, d in duckdb.sql(query).fetchall())
    box = shapely.box(west, south, east, north)
    rows = read_embeddings(str(compacted), columns=["geometry"]).to_pylist()
    want = sorted((r["tile_id"], str(r["start_date"])) for r in rows
                  if shapely.from_wkb(r["geometry"]).envelope.intersects(box))
    assert got == want and 0 < len(got) < len(rows)
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet({files!r})").fetchall() == [(len(expected),)]

    # geopandas reads both kinds of file, geometry and CRS included.
    for path in (incremental[0], shards[0]):
        frame = geopandas.read_parquet(path)
        assert frame.geometry.name == "geometry" and frame.crs == "OGC:CRS84"
        assert frame.geometry.is_valid.all() and len(frame) == pq.ParquetFile(path).metadata.num_rows
        assert len(frame["embedding"].iloc[0]) == frame["dim"].iloc[0]
