"""End-to-end: `python -m pipeline` (its `launch` entry) on DirectRunner against the fake Earth Engine server,
with a recipe-weight checkpoint in the official format going through the real loader. Small tiles and a
small model (--tile-px 32 --img-size 64) keep it fast."""
from __future__ import annotations

import datetime as dt
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from tiles.records import TimeWindow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW = TimeWindow(dt.date(2024, 6, 1), dt.date(2024, 7, 1))
BBOX = "8.0,47.0,8.006,47.004"        # a few 320 m tiles near Zurich
POINTS = "lon,lat,id\n13.40,52.52,berlin\n-3.70,40.42,madrid\n"  # one tile each (buffer 0)
GEOJSON = {"type": "Polygon", "coordinates": [[[2.35, 48.85], [2.353, 48.85], [2.353, 48.852], [2.35, 48.852],
                                               [2.35, 48.85]]]}


def _read_rows(output):
    files = sorted(glob.glob(os.path.join(output, "embeddings-*.parquet")))
    rows = [row for path in files for row in pq.read_table(path).to_pylist()]
    return files, rows


def _dead_letters(output):
    letters = []
    for path in glob.glob(os.path.join(output, "failed", "*.jsonl")):
        with open(path) as handle:
            letters += [json.loads(line) for line in handle if line.strip()]
    return letters


def _argv(fake_ee, checkpoint, output, *extra):
    return ["--start", "2024-06-01", "--end", "2024-07-01", "--output", str(output), "--tile-px", "32",
            "--img-size", "64", "--ee-endpoint", fake_ee.server.url, "--ee-credentials", "anonymous",
            "--ee-project", "test-project", "--checkpoint", str(checkpoint), "--max-batch-size", "8", *extra]


@pytest.fixture
def regions(tmp_path):
    points = tmp_path / "points.csv"
    points.write_text(POINTS)
    geojson = tmp_path / "paris.geojson"
    geojson.write_text(json.dumps(GEOJSON))
    return ["--bbox", BBOX, "--geojson", str(geojson), "--points", str(points), "--buffer-m", "0"]


def _expected_requests(argv):
    from pipeline.run import parse_and_validate
    from tiles.planning import plan_requests

    _, spec = parse_and_validate(argv)
    requests = plan_requests(spec.plan.regions, spec.plan.windows, spec.plan.tile_px, spec.plan.scale_m)
    return {r.key: r for r in requests}, spec


def test_run_writes_one_row_per_tile_equal_to_the_model_on_the_same_pixels(fake_ee, recipe_checkpoint_b64,
                                                                           regions, tmp_path, model_cache):
    import earth_engine
    import models
    from pipeline.run import launch
    from tiles.chips import point_chip
    from tiles.grid import tile_bounds_utm

    output = tmp_path / "out"
    argv = _argv(fake_ee, recipe_checkpoint_b64, output, *regions)
    expected, spec = _expected_requests(argv)
    empty = point_chip(13.40, 52.52, 32 * 10.0 / 2, 10.0)  # Berlin's chip (buffer 0: a --tile-px square): no scenes
    fake_ee.server.add_empty_area(empty.crs, tile_bounds_utm(empty))

    assert launch(argv) == 0

    files, rows = _read_rows(output)
    letters = _dead_letters(output)
    assert files and len(expected) >= 6
    keys = [f"{r['tile_id']}/{r['start_date']}_{r['end_date']}" for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    assert [letter["tile_id"] for letter in letters] == [empty.tile_id]
    assert letters[0]["stage"] == "fetch" and letters[0]["error_class"] == "NoScenesError"
    assert set(keys) == set(expected) - {letters[0]["key"]}
    assert {r["request_id"] for r in rows} >= {"madrid"}

    # Embeddings equal the model's direct output on the same pixels (same fetch code, same embedder).
    requests = [expected[k] for k in sorted(keys)]
    fetched = earth_engine.fetch_tiles(requests, spec.s2, fake_ee.settings)
    embedder = models.DynamicVisEmbedder(spec.inference.model)
    direct = embedder.embed(np.stack([p.chw for p in fetched]))["pooled"]
    by_key = {k: r for k, r in zip(keys, rows)}
    got = np.stack([np.asarray(by_key[k]["embedding"], np.float32) for k in sorted(keys)])
    np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-5)
    row = by_key[sorted(keys)[0]]
    assert row["dim"] == direct.shape[1] and row["img_size"] == 64 and row["arch"] == "b"
    assert row["checkpoint_sha256"] == embedder.metadata["ckpt_sha256"]

    metadata = pq.read_schema(files[0]).metadata
    assert json.loads(metadata[b"geo"])["primary_column"] == "geometry"
    run_config = json.loads(metadata[b"dynamicvis.run"])
    assert run_config["options"]["tile_px"] == 32 and run_config["options"]["ee_credentials"] == "anonymous"

    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["rows_written"] == len(rows) and manifest["counts"]["dead_letters"] == 1
    assert manifest["counts"]["planned_tiles"] == len(expected)
    assert manifest["model"]["checkpoint_sha256"] == embedder.metadata["ckpt_sha256"]
    assert manifest["versions"]["apache-beam"]
    assert sorted(manifest["files"]["embeddings"]) == files


def test_rerun_resumes_with_skip_existing_and_never_duplicates(fake_ee, recipe_checkpoint_b64, tmp_path,
                                                               model_cache, capsys):
    from pipeline.run import launch

    output = tmp_path / "out"
    small = _argv(fake_ee, recipe_checkpoint_b64, output, "--bbox", "8.0,47.0,8.003,47.002")
    assert launch(small) == 0
    _, first = _read_rows(output)

    # Same output again without --skip-existing: refused before anything runs.
    calls = len(fake_ee.server.calls)
    assert launch(small) == 2
    assert "--skip-existing" in capsys.readouterr().err
    assert len(fake_ee.server.calls) == calls

    # A larger region with --skip-existing: only the missing tiles are fetched and written.
    larger = _argv(fake_ee, recipe_checkpoint_b64, output, "--bbox", BBOX, "--skip-existing")
    expected, _ = _expected_requests(larger)
    assert launch(larger) == 0
    files, rows = _read_rows(output)
    keys = [f"{r['tile_id']}/{r['start_date']}_{r['end_date']}" for r in rows]
    assert len(files) == 2 and len(keys) == len(set(keys)) and set(keys) == set(expected)
    assert len(first) < len(rows)
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["skipped_existing"] == len(first)
    assert manifest["counts"]["rows_written"] == len(rows) - len(first)

    # The same job once more: nothing new, no duplicates, no Earth Engine calls.
    calls = len(fake_ee.server.calls)
    assert launch(larger) == 0
    _, again = _read_rows(output)
    assert len(again) == len(rows) and len(fake_ee.server.calls) == calls


def test_gcs_output_on_the_emulator(fake_ee, recipe_checkpoint_b64, gcs_bucket, gcs_emulator, model_cache):
    from apache_beam.io.filesystems import FileSystems

    from pipeline.run import launch
    from tests.fixtures.storage import gcs_client

    argv = _argv(fake_ee, recipe_checkpoint_b64, gcs_bucket, "--bbox", "8.0,47.0,8.003,47.002")
    expected, _ = _expected_requests(argv)
    assert launch(argv) == 0

    bucket, prefix = gcs_bucket[len("gs://"):].split("/", 1)
    names = sorted(b.name for b in gcs_client(gcs_emulator.url).list_blobs(bucket, prefix=prefix + "/"))
    shards = [n for n in names if n.startswith(f"{prefix}/embeddings-") and n.endswith(".parquet")]
    assert shards and f"{prefix}/manifest.json" in names
    assert not any("beam-temp" in n for n in names)
    rows = []
    for shard in shards:
        with FileSystems.open(f"gs://{bucket}/{shard}") as handle:
            rows += pq.read_table(handle).to_pylist()
    assert {f"{r['tile_id']}/{r['start_date']}_{r['end_date']}" for r in rows} == set(expected)
    assert len(rows) == len(expected)


@pytest.mark.slow
def test_multi_processing_direct_runner_shares_the_model(fake_ee, recipe_checkpoint_b64, tmp_path, model_cache):
    """Two SDK processes (subprocess, as a user would run it); the model is loaded once and served to both.

    The launcher runs with INFO logging, so the workers' "loaded DynamicVis" lines (one per model load)
    reach its stderr; without sharing there would be one per SDK process."""
    output = tmp_path / "out"
    argv = _argv(fake_ee, recipe_checkpoint_b64, output, "--bbox", "8.0,47.0,8.01,47.01",
                 "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    env = {**os.environ, "PYTHONPATH": REPO, "TMPDIR": "/tmp", "DYNAMICVIS_CACHE_DIR": str(model_cache)}
    launcher = "import logging; logging.basicConfig(level=logging.INFO); from pipeline.__main__ import main; main()"
    proc = subprocess.run([sys.executable, "-c", launcher, *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected, _ = _expected_requests(argv)
    _, rows = _read_rows(output)
    keys = [f"{r['tile_id']}/{r['start_date']}_{r['end_date']}" for r in rows]
    assert sorted(keys) == sorted(expected)
    assert len(expected) == 20  # both SDK processes get bundles: with sharing off, this run logs two loads
    assert "tiles embedded" in proc.stdout
    assert proc.stderr.count("loaded DynamicVis") == 1, proc.stderr[-4000:]
