"""`python -m pipeline.similar`: cosine nearest neighbours over a synthetic run equal a brute-force numpy top-k;
the query tile comes first with cosine 1; duplicates and fixed-size embeddings; GeoJSON; the BigQuery query."""
import datetime as dt
import json

import numpy as np
import pytest
import shapely
from shapely import wkb

from pipeline import similar
from pipeline.sample import Window
from tests import synthetic_run as synthetic
from tiles.grid import tile_center_lonlat, tile_footprint_wgs84
from tiles.records import TimeWindow

DIM = 24
JULY = TimeWindow(dt.date(2024, 7, 1), dt.date(2024, 8, 1))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """12 x 10 tiles in two windows, random embeddings (clustered, so neighbours are meaningful)."""
    directory = tmp_path_factory.mktemp("similar") / "run"
    tiles = synthetic.tiles_block(32632, 1400, 15000, 12, 10)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, DIM))
    vectors = {}
    rows = []
    for window in (synthetic.WINDOW, JULY):
        v = (centres[rng.integers(0, 6, len(tiles))] + 0.5 * rng.standard_normal((len(tiles), DIM)))
        vectors[window.start] = v.astype(np.float32)
        rows += synthetic.encode_rows(tiles, vectors[window.start], window)
    synthetic.write_shards(str(directory), rows, shards=3)
    return directory, tiles, vectors


def _brute_force(matrix: np.ndarray, query: np.ndarray, k: int):
    cosine = matrix.astype(np.float64) @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    order = np.argsort(-cosine, kind="stable")[:k]
    return order, cosine[order]


def test_neighbours_in_a_window_equal_brute_force_top_k_with_the_query_first(run, capsys):
    directory, tiles, vectors = run
    query = 37
    assert similar.main(["--input", str(directory), "--tile-id", tiles[query].tile_id, "--window", "2024-07-01",
                         "--same-window", "--k", "15"]) == 0
    printed = capsys.readouterr().out
    files = similar.sample_lib.shard_files(str(directory))
    window = Window(JULY.start, JULY.end)
    vector, found_window = similar.query_vector(files, tiles[query].tile_id, window)
    assert found_window == window and np.array_equal(vector, vectors[JULY.start][query])
    hits = similar.nearest(files, vector, 15, window)

    order, cosine = _brute_force(vectors[JULY.start], vectors[JULY.start][query], 15)
    assert [h.tile_id for h in hits] == [tiles[i].tile_id for i in order]
    assert np.allclose([h.cosine for h in hits], cosine, atol=1e-5)
    assert hits[0].tile_id == tiles[query].tile_id and abs(hits[0].cosine - 1) < 1e-6
    assert all(h.start_date == JULY.start for h in hits)
    lines = printed.splitlines()
    assert tiles[query].tile_id in lines[2] and " 1.00000 " in lines[2] and len(lines) == 2 + 15


def test_by_default_every_row_of_every_window_is_searched(run, capsys):
    directory, tiles, vectors = run
    files = similar.sample_lib.shard_files(str(directory))
    query = vectors[synthetic.WINDOW.start][5]
    hits = similar.nearest(files, query, 25)
    assert similar.main(["--input", str(directory), "--tile-id", tiles[5].tile_id, "--window", "2024-06-01",
                         "--k", "25"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "over every row" in lines[0]
    assert [line.split()[2:4] for line in lines[2:]] == [[h.tile_id, str(Window(h.start_date, h.end_date))]
                                                         for h in hits]
    matrix = np.concatenate([vectors[synthetic.WINDOW.start], vectors[JULY.start]])
    keys = [(t.tile_id, w.start) for w in (synthetic.WINDOW, JULY) for t in tiles]
    order, cosine = _brute_force(matrix, query, 25)
    assert [(h.tile_id, h.start_date) for h in hits] == [keys[i] for i in order]
    assert np.allclose([h.cosine for h in hits], cosine, atol=1e-5)


def test_a_tile_with_several_windows_needs_window(run, capsys):
    directory, tiles, _ = run
    assert similar.main(["--input", str(directory), "--tile-id", tiles[0].tile_id]) == 2
    err = capsys.readouterr().err
    assert "--window START" in err and "2024-06-01..2024-07-01" in err and "2024-07-01..2024-08-01" in err
    assert similar.main(["--input", str(directory), "--tile-id", "32632_32px10m_1_1", "--window", "2024-06-01"]) == 2
    assert "no such tile" in capsys.readouterr().err


def test_point_finds_the_tile_that_contains_it_and_geojson_has_the_footprints(run, tmp_path, capsys):
    directory, tiles, vectors = run
    lon, lat = tile_center_lonlat(tiles[50])
    out = tmp_path / "hits.geojson"
    assert similar.main(["--input", str(directory), "--point", f"{lon + 0.0005},{lat - 0.0005}",
                         "--window", "2024-06-01", "--same-window", "--k", "5", "--geojson", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(f"query {tiles[50].tile_id} ")
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 5
    first = collection["features"][0]
    assert first["properties"]["tile_id"] == tiles[50].tile_id and abs(first["properties"]["cosine"] - 1) < 1e-6
    footprint = shapely.geometry.shape(first["geometry"])
    assert footprint.equals_exact(tile_footprint_wgs84(tiles[50]), 1e-9)
    assert first["properties"]["start_date"] == "2024-06-01"

    assert similar.main(["--input", str(directory), "--point", "20.0,10.0"]) == 2
    assert "no tile of the run covers it" in capsys.readouterr().err
    assert similar.main(["--input", str(directory), "--point", "x,1"]) == 2
    assert "LON,LAT" in capsys.readouterr().err


def test_duplicate_keys_are_one_hit_and_fixed_size_embeddings_read_alike(tmp_path):
    tiles = synthetic.tiles_block(32633, 600, 16000, 6, 5)
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((len(tiles), DIM)).astype(np.float32)
    rows = synthetic.encode_rows(tiles, vectors)
    synthetic.write_shards(str(tmp_path / "once"), rows, shards=1)
    twice = tmp_path / "twice"
    synthetic.write_shards(str(twice), rows, shards=2, fixed_size=True)
    synthetic.write_shards(str(twice), rows[::2], shards=1, tag="retry")  # half the keys written again
    synthetic.write_shards(str(twice), rows[::3], shards=1, tag="retry2")  # a third, a third time

    results = {}
    for name in ("once", "twice"):
        files = similar.sample_lib.shard_files(str(tmp_path / name))
        results[name] = similar.nearest(files, vectors[4], k=len(tiles))
    assert [h.tile_id for h in results["twice"]] == [h.tile_id for h in results["once"]]
    assert len({h.tile_id for h in results["twice"]}) == len(tiles)
    order, cosine = _brute_force(vectors, vectors[4], len(tiles))
    assert [h.tile_id for h in results["twice"]] == [tiles[i].tile_id for i in order]
    assert np.allclose([h.cosine for h in results["twice"]], cosine, atol=1e-5)
    assert wkb.loads(results["twice"][0].geometry).equals_exact(tile_footprint_wgs84(tiles[4]), 1e-9)


def test_bigquery_query_on_the_emulator_equals_the_duckdb_search(run, bigquery_dataset, gcs_disk_emulator):
    """`similar.bigquery_sql` (COSINE_DISTANCE) over a table of the pipeline's BigQuery schema, loaded the way
    the pipeline loads it (a JSON load job from gs://), on bqemulator. The emulator has no VECTOR_SEARCH or
    ML.DISTANCE (docs/MAPS_AND_SEARCH.md)."""
    from google.cloud import bigquery

    from tests.fixtures.storage import GCS_BUCKET, gcs_client
    from transforms import schema

    directory, tiles, vectors = run
    client = bigquery_dataset.client()
    table_id = bigquery_dataset.table_id("embeddings")
    rows = [schema.to_bigquery_row(r) for w in (synthetic.WINDOW, JULY)
            for r in synthetic.encode_rows(tiles, vectors[w.start], w)]
    name = bigquery_dataset.temp_location.split(f"gs://{GCS_BUCKET}/", 1)[1] + "/rows.json"
    gcs_client(gcs_disk_emulator.url).bucket(GCS_BUCKET).blob(name).upload_from_string(
        "\n".join(json.dumps(r) for r in rows))
    fields = [bigquery.SchemaField(f["name"], f["type"], mode=f["mode"]) for f in schema.bigquery_schema()["fields"]]
    client.load_table_from_uri(f"gs://{GCS_BUCKET}/{name}", table_id, job_config=bigquery.LoadJobConfig(
        schema=fields, source_format="NEWLINE_DELIMITED_JSON")).result(timeout=60)

    query = tiles[21]
    job = client.query(similar.bigquery_sql(table_id), job_config=bigquery.QueryJobConfig(query_parameters=[
        bigquery.ScalarQueryParameter("tile_id", "STRING", query.tile_id),
        bigquery.ScalarQueryParameter("start_date", "DATE", JULY.start),
        bigquery.ScalarQueryParameter("k", "INT64", 10)]))
    found = [(r["tile_id"], r["start_date"], r["cosine"]) for r in job.result(timeout=60)]

    files = similar.sample_lib.shard_files(str(directory))
    vector, _ = similar.query_vector(files, query.tile_id, Window(JULY.start, JULY.end))
    expected = similar.nearest(files, vector, 10)
    assert [(t, s) for t, s, _ in found] == [(h.tile_id, h.start_date) for h in expected]
    assert found[0][0] == query.tile_id and abs(found[0][2] - 1) < 1e-9
    assert np.allclose([c for *_, c in found], [h.cosine for h in expected], atol=1e-5)
