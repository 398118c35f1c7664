"""`python -m pipeline.map` on synthetic runs with known embeddings: colours (PCA of the known vectors) at the
tiles' places, GeoTIFF georeferencing read back with rasterio, basis reuse, and a bounded sample."""
import datetime as dt
import json
import tracemalloc

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from pipeline import map as map_cli
from pipeline import sample as sample_lib
from tests import synthetic_run as synthetic
from tiles.grid import tile_bounds_utm, tile_center_lonlat
from tiles.records import TimeWindow

DIM = 12


def _known_embeddings(n: int, seed: int = 0) -> np.ndarray:
    """Three clear principal axes of falling variance along random orthonormal directions, plus a little noise."""
    rng = np.random.default_rng(seed)
    axes, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    coefficients = rng.standard_normal((n, 3)) * np.array([9.0, 4.0, 2.0])
    return (5.0 + coefficients @ axes[:, :3].T + 0.01 * rng.standard_normal((n, DIM))).astype(np.float32)


def _expected_rgb(vectors: np.ndarray) -> np.ndarray:
    """The documented colouring, computed independently: the first three right singular vectors of the
    centred vectors (each signed so its largest-magnitude loading is positive), scores scaled from their 1st
    to 99th percentile to 0..255."""
    x = vectors.astype(np.float64)
    centred = x - x.mean(axis=0)
    axes = np.linalg.svd(centred, full_matrices=False)[2][:3]
    axes *= np.sign(axes[np.arange(3), np.argmax(np.abs(axes), axis=1)])[:, None]
    scores = centred @ axes.T
    lo, hi = np.percentile(scores, [1, 99], axis=0)
    return np.rint(np.clip((scores - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _pixel(dataset, tile, alpha=True):
    """RGBA of the GeoTIFF pixel under the tile's centre."""
    xmin, ymin, xmax, ymax = tile_bounds_utm(tile)
    row, col = dataset.index((xmin + xmax) / 2, (ymin + ymax) / 2)
    return dataset.read(window=((row, row + 1), (col, col + 1)))[:, 0, 0]


@pytest.fixture
def two_zone_run(tmp_path):
    west = synthetic.tiles_block(32632, 1400, 15000, 5, 4)
    east = synthetic.tiles_block(32633, 900, 15001, 3, 2)
    tiles = west + east
    vectors = _known_embeddings(len(tiles))
    synthetic.write_shards(str(tmp_path / "run"), synthetic.encode_rows(tiles, vectors), shards=3)
    return tmp_path / "run", tiles, vectors


def test_geotiff_per_zone_has_pca_colours_at_the_tiles_and_their_grid(two_zone_run, tmp_path, capsys):
    run, tiles, vectors = two_zone_run
    assert map_cli.main(["--input", str(run), "--geotiff", str(tmp_path / "map.tif"),
                         "--png", str(tmp_path / "map.png")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "map-32632.tif"), str(tmp_path / "map-32633.tif"), str(tmp_path / "map.png")]

    expected = _expected_rgb(vectors)
    for epsg in (32632, 32633):
        zone = [(i, t) for i, t in enumerate(tiles) if t.epsg == epsg]
        size = zone[0][1].size_m
        with rasterio.open(tmp_path / f"map-{epsg}.tif") as tif:
            assert tif.crs.to_epsg() == epsg and tif.count == 4 and tif.dtypes[0] == "uint8"
            left = min(t.ix for _, t in zone) * size
            top = (max(t.iy for _, t in zone) + 1) * size
            assert tif.transform.almost_equals(from_origin(left, top, size, size))
            assert tif.shape == (len({t.iy for _, t in zone}), len({t.ix for _, t in zone}))
            for i, tile in zone:
                assert _pixel(tif, tile).tolist() == [*expected[i].tolist(), 255], tile.tile_id
            # the transform of each tile (the schema's column) maps onto the tile's own pixel
            i, tile = zone[-1]
            row, col = tif.index(tile.transform[2] + 1, tile.transform[5] - 1)
            assert (row, col) == ((top - (tile.iy + 1) * size) // size, (tile.ix * size - left) // size)
    assert Image.open(tmp_path / "map.png").mode == "RGB"


def test_png_quick_look_draws_the_tiles_in_place_above_a_scale_bar(tmp_path):
    tiles = synthetic.tiles_block(32632, 1400, 15000, 4, 3)
    vectors = _known_embeddings(len(tiles), seed=3)
    synthetic.write_shards(str(tmp_path / "run"), synthetic.encode_rows(tiles, vectors), shards=1)
    assert map_cli.main(["--input", str(tmp_path / "run")]) == 0  # default: INPUT/map.png
    image = np.asarray(Image.open(tmp_path / "run" / "map.png").convert("RGB"))
    factor = map_cli.PNG_MIN_PX // 4  # 4 tiles across, enlarged by whole pixels
    assert image.shape[1] == 4 * factor and image.shape[0] > 3 * factor  # the footer below the map
    expected = _expected_rgb(vectors)
    for i, tile in enumerate(tiles):
        row = (2 - (tile.iy - 15000)) * factor + factor // 2
        col = (tile.ix - 1400) * factor + factor // 2
        assert image[row, col].tolist() == expected[i].tolist()
    footer = image[3 * factor:]
    assert (footer.min(axis=2) < 50).any()  # the scale bar and labels are drawn in black


def test_quick_look_across_a_zone_boundary_warps_both_zones_into_place(tmp_path):
    """Tiles either side of 12 E (UTM zones 32 and 33): one picture, each tile's colour under its centre."""
    import pyproj

    west = synthetic.tiles_block(32632, 2268, 16277, 4, 3)  # ends near 11.99 E
    east = synthetic.tiles_block(32633, 852, 16277, 4, 3)  # starts near 12.01 E
    tiles = west + east
    vectors = _known_embeddings(len(tiles), seed=11)
    synthetic.write_shards(str(tmp_path / "run"), synthetic.encode_rows(tiles, vectors), shards=2)
    files = sample_lib.shard_files(str(tmp_path / "run"))
    basis = map_cli.load_or_fit_basis(files, str(tmp_path / "basis.json"))
    rasters = map_cli.draw(files, basis, sample_lib.pick_window(files, None))
    assert sorted(rasters) == [32632, 32633]
    whole = map_cli.mosaic(rasters)
    to_picture = pyproj.Transformer.from_crs("EPSG:4326", whole.crs, always_xy=True)
    expected = _expected_rgb(vectors)
    for i, tile in enumerate(tiles):
        lon, lat = tile_center_lonlat(tile)
        col, row = ~whole.transform * to_picture.transform(lon, lat)
        assert whole.rgba[int(row), int(col)].tolist() == [*expected[i].tolist(), 255], tile.tile_id
    west_lon, _, east_lon, _ = whole.lonlat_bounds
    assert west_lon < 11.99 < 12.01 < east_lon
    assert map_cli.write_png(rasters, str(tmp_path / "two.png"), sample_lib.pick_window(files, None))


def test_grid_runs_draw_each_feature_cell_at_its_ground_position(tmp_path):
    tiles = synthetic.tiles_block(32632, 1400, 15000, 2, 2)
    cells = 4
    rng = np.random.default_rng(5)
    grids = _known_embeddings(len(tiles) * cells * cells, seed=5).reshape(len(tiles), cells, cells, DIM)
    grids = np.ascontiguousarray(grids.transpose(0, 3, 1, 2))  # (n, D, H, W) as the model writes it
    pooled = grids.mean(axis=(2, 3)) + 0.1 * rng.standard_normal((len(tiles), DIM)).astype(np.float32)
    synthetic.write_shards(str(tmp_path / "run"), synthetic.encode_rows(tiles, pooled, grids=grids), grid=True)
    assert map_cli.main(["--input", str(tmp_path / "run"), "--geotiff", str(tmp_path / "cells.tif")]) == 0

    basis = map_cli.Basis.from_json(json.loads((tmp_path / "run" / map_cli.BASIS_FILE).read_text()))
    assert basis.n_sample == len(tiles)  # fitted on the pooled embeddings
    with rasterio.open(tmp_path / "cells.tif") as tif:
        cell_m = tiles[0].size_m / cells
        assert tif.res == (cell_m, cell_m) and tif.shape == (2 * cells, 2 * cells)
        picture = tif.read()
        for i, tile in enumerate(tiles):
            xmin, _, _, ymax = tile_bounds_utm(tile)
            for h in range(cells):
                for w in range(cells):
                    row, col = tif.index(xmin + (w + 0.5) * cell_m, ymax - (h + 0.5) * cell_m)
                    colour = basis.rgb(grids[i, :, h, w])
                    assert picture[:3, row, col].tolist() == colour.tolist()
    # --pooled: one pixel per tile
    assert map_cli.main(["--input", str(tmp_path / "run"), "--pooled", "--geotiff", str(tmp_path / "p.tif")]) == 0
    with rasterio.open(tmp_path / "p.tif") as tif:
        assert tif.shape == (2, 2) and tif.res == (tiles[0].size_m, tiles[0].size_m)


def test_fixed_size_embeddings_and_duplicate_keys_draw_the_same_map(tmp_path):
    tiles = synthetic.tiles_block(32632, 1400, 15000, 3, 3)
    rows = synthetic.encode_rows(tiles, _known_embeddings(len(tiles), seed=7))
    synthetic.write_shards(str(tmp_path / "a"), rows, shards=1)
    synthetic.write_shards(str(tmp_path / "b"), rows, shards=2, fixed_size=True)
    synthetic.write_shards(str(tmp_path / "b"), rows, shards=1, tag="again")  # every key written twice
    basis = str(tmp_path / "a" / map_cli.BASIS_FILE)
    for name in ("a", "b"):  # one colour basis for both
        assert map_cli.main(["--input", str(tmp_path / name), "--basis", basis,
                             "--geotiff", str(tmp_path / f"{name}.tif")]) == 0
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert a.transform == b.transform and a.tags()["TILES"] == b.tags()["TILES"] == str(len(tiles))
        assert np.array_equal(a.read(), b.read())


def test_windows_share_one_saved_basis_and_several_windows_need_window(tmp_path, capsys):
    tiles = synthetic.tiles_block(32632, 1400, 15000, 3, 2)
    june, july = synthetic.WINDOW, TimeWindow(dt.date(2024, 7, 1), dt.date(2024, 8, 1))
    rows = (synthetic.encode_rows(tiles, _known_embeddings(len(tiles), seed=1), june)
            + synthetic.encode_rows(tiles, _known_embeddings(len(tiles), seed=2), july))
    run = tmp_path / "run"
    synthetic.write_shards(str(run), rows, shards=2)

    assert map_cli.main(["--input", str(run)]) == 2
    assert "--window START" in capsys.readouterr().err
    assert map_cli.main(["--input", str(run), "--window", "2024-07-02"]) == 2
    assert "2024-07-01..2024-08-01" in capsys.readouterr().err

    assert map_cli.main(["--input", str(run), "--window", "2024-06-01", "--geotiff", str(tmp_path / "j.tif")]) == 0
    saved = (run / map_cli.BASIS_FILE).read_text()
    assert json.loads(saved)["n_rows"] == 2 * len(tiles)  # fitted run-wide, on both windows
    assert map_cli.main(["--input", str(run), "--window", "2024-07-01", "--geotiff", str(tmp_path / "k.tif")]) == 0
    assert (run / map_cli.BASIS_FILE).read_text() == saved  # reused, not refitted

    # another run reuses it with --basis and gets the same colours for the same vectors
    other = tmp_path / "other"
    synthetic.write_shards(str(other), rows[len(tiles):], shards=1)
    assert map_cli.main(["--input", str(other), "--basis", str(run / map_cli.BASIS_FILE),
                         "--geotiff", str(tmp_path / "o.tif")]) == 0
    with rasterio.open(tmp_path / "k.tif") as k, rasterio.open(tmp_path / "o.tif") as o:
        assert np.array_equal(k.read(), o.read())


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert map_cli.main(["--input", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert map_cli.main(["--input", str(tmp_path / "empty")]) == 2
    assert "no embeddings-*.parquet" in capsys.readouterr().err


def test_sample_memory_stays_bounded_when_the_run_is_larger_than_the_sample(tmp_path):
    sample, dim = 500, 64
    peaks = {}
    for rows in (5_000, 40_000):
        run = tmp_path / f"run{rows}"
        synthetic.write_large_run(str(run), rows, dim, tiles_per_window=1_000, rows_per_file=5_000)
        files = sample_lib.shard_files(str(run))
        tracemalloc.start()
        reservoir = map_cli.sample_embeddings(files, size=sample, batch_rows=1_000)
        peaks[rows] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert reservoir.seen == rows and reservoir.vectors.shape == (sample, dim)
    all_rows_bytes = 40_000 * dim * 4
    assert peaks[40_000] < all_rows_bytes / 4  # far below holding every vector
    assert peaks[40_000] < 1.5 * peaks[5_000]  # 8x the rows, about the same memory


def test_reservoir_is_a_uniform_sample():
    reservoir = sample_lib.Reservoir(1_000, seed=1)
    for start in range(0, 100_000, 7_000):
        reservoir.add(np.arange(start, min(start + 7_000, 100_000), dtype=np.float32)[:, None])
    values = reservoir.vectors[:, 0]
    assert len(np.unique(values)) == 1_000  # without replacement
    counts, _ = np.histogram(values, bins=10, range=(0, 100_000))
    assert counts.min() > 60 and counts.max() < 140  # about 100 per tenth of the stream


def test_a_real_grid_run_is_mapped_cell_by_cell_and_searchable(fake_ee, recipe_checkpoint_b64, tmp_path,
                                                               model_cache, capsys):
    """The real pipeline (fake Earth Engine, recipe checkpoint) with --grid, then map and similar on its shards."""
    import pyarrow.parquet as pq

    from pipeline import similar
    from pipeline.run import launch
    from tiles.grid import tile_from_id
    from transforms import schema

    output = tmp_path / "out"
    assert launch(["--bbox", "8.0,47.0,8.006,47.004", "--start", "2024-06-01", "--end", "2024-07-01",
                   "--output", str(output), "--tile-px", "32", "--img-size", "64", "--grid",
                   "--ee-endpoint", fake_ee.server.url, "--ee-credentials", "anonymous", "--ee-project",
                   "test-project", "--checkpoint", str(recipe_checkpoint_b64), "--max-batch-size", "8"]) == 0
    rows = [r for f in sample_lib.shard_files(str(output)) for r in pq.read_table(f).to_pylist()]
    assert map_cli.main(["--input", str(output), "--geotiff", str(tmp_path / "cells.tif")]) == 0
    basis = map_cli.Basis.from_json(json.loads((output / map_cli.BASIS_FILE).read_text()))
    with rasterio.open(tmp_path / "cells.tif") as tif:
        picture = tif.read()
        for row in rows:
            tile, grid = tile_from_id(row["tile_id"]), schema.row_grid(row)
            _, h_cells, w_cells = grid.shape
            cell_m = tile.size_m / w_cells
            assert tif.crs.to_epsg() == tile.epsg and tif.res == (cell_m, cell_m)
            xmin, _, _, ymax = tile_bounds_utm(tile)
            for h in range(h_cells):
                for w in range(w_cells):
                    r, c = tif.index(xmin + (w + 0.5) * cell_m, ymax - (h + 0.5) * cell_m)
                    assert picture[:, r, c].tolist() == [*basis.rgb(grid[:, h, w]).tolist(), 255]
    capsys.readouterr()
    assert similar.main(["--input", str(output), "--tile-id", rows[0]["tile_id"], "--k", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:3] == ["1", "1.00000", rows[0]["tile_id"]]
