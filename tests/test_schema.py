"""The output schema: Parquet (GeoParquet) and BigQuery forms agree, rows encode and read back."""
import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from shapely import wkb

from tiles.records import Tile, TileRequest, TimeWindow
from transforms import schema

RUN = schema.RunInfo(pipeline_version="0.1.0", composite="median", cloudy_pct=30.0, pooling="mean",
                     created_at=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc))
MODEL_META = {"arch": "b", "image_size": 64, "path_type": "forward_reverse_mean", "sampling_scale": 0.1,
              "mamba2": False, "hf_repo": "KyanChen/DynamicVis", "ckpt_file": "x.pth", "ckpt_sha256": "ab" * 32}


def _row(grid=None):
    tile = Tile(32633, 40, 5000, 32, 10.0)
    request = TileRequest(tile, TimeWindow(dt.date(2021, 6, 1), dt.date(2021, 7, 1)), "region-0")
    meta = schema.TileMeta(request, valid_fraction=0.75, n_scenes=4)
    return tile, schema.encode_row(meta, np.arange(8, dtype=np.float32), MODEL_META, RUN, grid=grid)


def test_parquet_round_trip_with_geoparquet_and_run_metadata(tmp_path):
    tile, row = _row(grid=np.ones((8, 2, 2), np.float32))
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=schema.arrow_schema(grid=True, run_config={"k": 1})), path)

    table = pq.read_table(path)
    metadata = table.schema.metadata
    geo = json.loads(metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert json.loads(metadata[schema.RUN_METADATA_KEY]) == {"k": 1}
    back = table.to_pylist()[0]
    assert back["tile_id"] == tile.tile_id and back["crs"] == "EPSG:32633"
    assert back["transform"] == list(tile.transform)
    assert back["start_date"] == dt.date(2021, 6, 1) and back["end_date"] == dt.date(2021, 7, 1)
    assert np.array_equal(np.asarray(back["embedding"], np.float32), np.arange(8, dtype=np.float32))
    assert back["dim"] == 8 and back["n_scenes"] == 4 and back["checkpoint_sha256"] == "ab" * 32
    assert schema.row_grid(back).shape == (8, 2, 2)
    footprint = wkb.loads(back["geometry"])
    assert footprint.is_valid and footprint.contains(shapely.Point(back["lon"], back["lat"]))
    # 320 m tile near 45 N: about 0.004 deg on a side
    minx, miny, maxx, maxy = footprint.bounds
    assert 0.002 < maxx - minx < 0.006 and 0.002 < maxy - miny < 0.004


def test_bigquery_schema_matches_parquet_columns_and_types():
    arrow = schema.arrow_schema()
    bq = {f["name"]: f for f in schema.bigquery_schema()["fields"]}
    assert list(bq) == [name for name in arrow.names if name != schema.BBOX_COLUMN]  # bbox: Parquet-only covering
    assert bq["geometry"]["type"] == "GEOGRAPHY"
    assert (bq["embedding"]["type"], bq["embedding"]["mode"]) == ("FLOAT64", "REPEATED")
    assert bq["start_date"]["type"] == "DATE" and bq["created_at"]["type"] == "TIMESTAMP"
    assert schema.bigquery_table_parameters() == {"timePartitioning": {"type": "DAY", "field": "start_date"},
                                                   "clustering": {"fields": ["tile_id"]}}
    for name, field in bq.items():
        assert arrow.field(name).nullable == (field["mode"] != "REQUIRED"), name


def test_bigquery_row_encoding_is_json_ready():
    _, row = _row(grid=np.ones((8, 1, 1), np.float32))
    out = schema.to_bigquery_row(row)
    assert set(out) == set(schema.arrow_schema().names) - {schema.BBOX_COLUMN}  # grid and bbox are Parquet-only
    json.dumps(out)
    assert out["geometry"].startswith("POLYGON ((")
    assert out["start_date"] == "2021-06-01" and out["created_at"].startswith("2024-01-02T03:04:05")
    assert all(isinstance(v, float) for v in out["embedding"])


def test_row_key_equals_request_key():
    tile, row = _row()
    request = TileRequest(tile, TimeWindow(dt.date(2021, 6, 1), dt.date(2021, 7, 1)))
    assert schema.row_key(row["tile_id"], row["start_date"], row["end_date"]) == request.key


@pytest.mark.parametrize("bad", [{"arch": None}, {}])
def test_missing_model_metadata_fails_loudly(bad):
    tile = Tile(32633, 1, 1, 32, 10.0)
    meta = schema.TileMeta(TileRequest(tile, TimeWindow(dt.date(2021, 6, 1), dt.date(2021, 7, 1))), 1.0, None)
    with pytest.raises((TypeError, ValueError)):
        schema.encode_row(meta, np.zeros(4), bad, RUN)
