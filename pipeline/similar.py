"""`python -m pipeline.similar`: the tiles whose embeddings are nearest (cosine) to one tile's, over every row.

DuckDB scans the run's Parquet shards (only the columns needed) and keeps a top-k heap, so memory does not grow
with the run. Rows are keyed by tile and time window; a key written twice (before compaction) is one hit.
The same search over a BigQuery table is `bigquery_sql` (see docs/MAPS_AND_SEARCH.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np

from pipeline import sample as sample_lib
from tiles.errors import InputError

# DuckDB would otherwise cache up to 80 % of RAM while scanning; a top-k needs little (measured: 1M rows x 768
# floats in ~300 MiB peak RSS with this limit, ~930 MiB without, at the same speed).
MEMORY_LIMIT = "512MB"


@dataclasses.dataclass(frozen=True)
class Hit:
    """One neighbour: its rank (1 = best), cosine similarity, key, tile centre (degrees) and WKB footprint."""

    rank: int
    cosine: float
    tile_id: str
    start_date: dt.date
    end_date: dt.date
    lon: float
    lat: float
    geometry: bytes  # WKB footprint (WGS84)


def _connect():
    import duckdb

    connection = duckdb.connect(":memory:")
    connection.execute("SET autoinstall_known_extensions = false")
    connection.execute("SET enable_progress_bar = false")  # it would print into the table on stdout
    connection.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    return connection


def _source(files: Sequence[str]) -> str:
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return f"read_parquet([{listing}], union_by_name = true)"


def _window_clause(window: Optional[sample_lib.Window]) -> Tuple[str, list]:
    if window is None:
        return "TRUE", []
    return "start_date = ? AND end_date = ?", [window.start, window.end]


def query_vector(files: Sequence[str], tile_id: str, window: Optional[sample_lib.Window] = None,
                 connection=None) -> Tuple[np.ndarray, sample_lib.Window]:
    """The embedding of `tile_id` (in `window`, needed when the tile has several) and its window.

    Args:
        files: The run's embedding files.
        tile_id: The query tile.
        window: Its time window; needed only when the tile has rows in several.
        connection: A DuckDB connection to reuse; default a new one.

    Returns:
        (embedding float32 (D,), its Window).

    Raises:
        InputError: No such tile (in `window`), or rows in several windows and no `window`.
    """
    connection = connection or _connect()
    where, params = _window_clause(window)
    rows = connection.execute(
        f"SELECT start_date, end_date, any_value(embedding::FLOAT[]) FROM {_source(files)} "
        f"WHERE tile_id = ? AND {where} GROUP BY start_date, end_date ORDER BY start_date",
        [tile_id, *params]).fetchall()
    if not rows:
        suffix = f" in window {window}" if window else ""
        raise InputError(f"--tile-id {tile_id}: no such tile in the run{suffix}")
    if len(rows) > 1:
        listing = ", ".join(str(sample_lib.Window(s, e)) for s, e, _ in rows)
        raise InputError(f"--tile-id {tile_id} has rows in {len(rows)} windows ({listing}); "
                         f"pick one with --window START")
    start, end, vector = rows[0]
    return np.asarray(vector, np.float32), sample_lib.Window(start, end)


def tile_at(files: Sequence[str], lon: float, lat: float, connection=None) -> str:
    """The id of the run's tile that contains (lon, lat): computed on the run's grid, then checked to exist.

    Args:
        files: The run's embedding files.
        lon: Longitude, degrees.
        lat: Latitude, degrees.
        connection: A DuckDB connection to reuse; default a new one.

    Returns:
        The tile id.

    Raises:
        InputError: No tile of the run covers the point (the message gives the run's extent), or tiles of
            several grids do.
    """
    from tiles.grid import tile_containing

    connection = connection or _connect()
    grids = connection.execute(f"SELECT DISTINCT tile_px, scale_m FROM {_source(files)}").fetchall()
    found = []
    for tile_px, scale_m in grids:
        tile_id = tile_containing(lon, lat, int(tile_px), float(scale_m)).tile_id
        if connection.execute(f"SELECT count(*) FROM {_source(files)} WHERE tile_id = ?", [tile_id]).fetchone()[0]:
            found.append(tile_id)
    if not found:
        west, south, east, north = connection.execute(
            f"SELECT min(lon), min(lat), max(lon), max(lat) FROM {_source(files)}").fetchone()
        raise InputError(f"--point {lon},{lat}: no tile of the run covers it (tile centres span lon "
                         f"{west:.4f}..{east:.4f}, lat {south:.4f}..{north:.4f})")
    if len(found) > 1:
        raise InputError(f"--point {lon},{lat} lies in tiles of several grids ({', '.join(found)}); use --tile-id")
    return found[0]


def nearest(files: Sequence[str], vector: np.ndarray, k: int = 20, window: Optional[sample_lib.Window] = None,
            connection=None) -> List[Hit]:
    """The `k` rows (distinct keys) of highest cosine similarity to `vector`, best first.

    A top-n scan keeps `fetch` rows; should duplicate keys leave fewer than `k` distinct ones, the scan is
    repeated with twice as many (duplicates are rare, so once is the rule).

    Args:
        files: The run's embedding files.
        vector: The query embedding (D,).
        k: Number of hits (default 20); the query tile itself is among them.
        window: Search only this time window; default every row.
        connection: A DuckDB connection to reuse; default a new one.

    Returns:
        Up to `k` Hits, best first (ties by tile id, then start date).

    Raises:
        InputError: `k` < 1.
    """
    if k < 1:
        raise InputError(f"--k must be >= 1, got {k}")
    connection = connection or _connect()
    where, params = _window_clause(window)
    query = [float(v) for v in np.asarray(vector, np.float32).reshape(-1)]
    sql = (f"SELECT tile_id, start_date, end_date, lon, lat, geometry, cosine FROM ("
           f"  SELECT tile_id, start_date, end_date, lon, lat, geometry,"
           f"         list_cosine_similarity(embedding, ?::FLOAT[]) AS cosine"
           f"  FROM {_source(files)} WHERE {where}) "
           f"WHERE NOT isnan(cosine) ORDER BY cosine DESC, tile_id, start_date LIMIT ?")
    fetch = k
    while True:
        rows = connection.execute(sql, [query, *params, fetch]).fetchall()
        distinct, seen = [], set()
        for row in rows:
            if row[:3] not in seen:
                seen.add(row[:3])
                distinct.append(row)
        if len(distinct) >= k or len(rows) < fetch:
            break
        fetch *= 2
    return [Hit(rank=i + 1, cosine=float(c), tile_id=t, start_date=s, end_date=e, lon=float(x), lat=float(y),
                geometry=bytes(g))
            for i, (t, s, e, x, y, g, c) in enumerate(distinct[:k])]


def table(hits: Sequence[Hit]) -> str:
    """The hits as a fixed-width text table (rank, cosine, tile_id, window, lon, lat)."""
    lines = [f"{'rank':>4}  {'cosine':>8}  {'tile_id':<28}  {'window':<22}  {'lon':>10}  {'lat':>9}"]
    lines += [f"{h.rank:>4}  {h.cosine:8.5f}  {h.tile_id:<28}  {str(sample_lib.Window(h.start_date, h.end_date)):<22}"
              f"  {h.lon:10.5f}  {h.lat:9.5f}" for h in hits]
    return "\n".join(lines)


def geojson(hits: Sequence[Hit]) -> dict:
    """The hits as a GeoJSON FeatureCollection of tile footprints."""
    from shapely import wkb
    from shapely.geometry import mapping

    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": mapping(wkb.loads(h.geometry)),
         "properties": {"rank": h.rank, "cosine": h.cosine, "tile_id": h.tile_id,
                        "start_date": h.start_date.isoformat(), "end_date": h.end_date.isoformat()}}
        for h in hits]}


def bigquery_sql(table_id: str) -> str:
    """The same search in BigQuery GoogleSQL over a table of this pipeline's schema (`project.dataset.table`).

    Parameters: @tile_id STRING, @start_date DATE (the query row's window), @k INT64. COSINE_DISTANCE is
    exact (a full scan, like the DuckDB search); for tables with a vector index see VECTOR_SEARCH in the docs.

    Args:
        table_id: The table, `project.dataset.table`.

    Returns:
        The SQL text.
    """
    return (f"WITH query AS (\n"
            f"  SELECT ANY_VALUE(embedding) AS embedding FROM `{table_id}`\n"
            f"  WHERE tile_id = @tile_id AND start_date = @start_date)\n"
            f"SELECT t.tile_id, t.start_date, t.end_date, t.lon, t.lat,\n"
            f"       1 - COSINE_DISTANCE(t.embedding, query.embedding) AS cosine\n"
            f"FROM `{table_id}` AS t CROSS JOIN query\n"
            f"ORDER BY cosine DESC, t.tile_id, t.start_date\n"
            f"LIMIT @k")


def _point(text: str) -> Tuple[float, float]:
    try:
        lon, lat = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--point {text!r}: expected LON,LAT in degrees, e.g. --point 8.01,47.01") from None
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise InputError(f"--point {text!r}: longitude must be in [-180, 180] and latitude in [-90, 90]")
    return lon, lat


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.similar", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="the run's --output directory (embeddings-*.parquet)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--tile-id", help="query tile, e.g. 32632_32px10m_1468_14765")
    which.add_argument("--point", help="query point LON,LAT: the tile containing it")
    p.add_argument("--k", type=int, default=20, help="number of neighbours (the query tile itself included)")
    p.add_argument("--window", metavar="START",
                   help="the query tile's time window (start date); needed when the tile has several")
    p.add_argument("--same-window", action="store_true", help="search only the query's window (default: every row)")
    p.add_argument("--geojson", help="also write the hits (tile footprints) as GeoJSON here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m pipeline.similar` (see `parser` for the flags); prints the hits as a table.

    Args:
        argv: The arguments; default sys.argv[1:].

    Returns:
        0, or 2 after an `error: ...` line on stderr for bad input.
    """
    args = parser().parse_args(argv)
    try:
        files = sample_lib.shard_files(args.input)
        window = sample_lib.pick_window(files, args.window) if args.window else None
        connection = _connect()
        tile_id = args.tile_id or tile_at(files, *_point(args.point), connection=connection)
        vector, query_window = query_vector(files, tile_id, window, connection)
        hits = nearest(files, vector, args.k, query_window if args.same_window else None, connection)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"query {tile_id} {query_window}; {len(hits)} nearest by cosine over "
          f"{'window ' + str(query_window) if args.same_window else 'every row'}:")
    print(table(hits))
    if args.geojson:
        with open(args.geojson, "w", encoding="utf-8") as handle:
            json.dump(geojson(hits), handle)
        print(args.geojson)
    return 0


if __name__ == "__main__":
    sys.exit(main())
