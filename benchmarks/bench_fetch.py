"""Benchmark FetchTiles (super-tiles) against one request per tile, on the fake Earth Engine server.

The server sleeps ``base + per-MB x response MB`` per request (default 300 ms + 50 ms/MB) and the real
``ee`` client talks HTTP to it. Three runs of the same DoFn on the DirectRunner, differing only in
settings: ours (super-tiles), one request per tile at the same concurrency cap, and one request per
tile sequentially (on a subset, to keep the run short); then ours again under injected faults
(default 20 % 429s, 2 % 500s), checking that every tile is embedded or dead-lettered and none lost.

    /work/venv/bin/python -m benchmarks.bench_fetch            # ~1 minute
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import sys
import time
from typing import List

import apache_beam as beam
from apache_beam.metrics import Metrics, MetricsFilter

import earth_engine
from tests.fakes.ee_server import PROJECT, FakeEarthEngine, FaultRates, LatencyModel
from tiles.records import Tile, TileRequest, TimeWindow
from transforms.fetch import DEAD_LETTER, FetchTiles

WINDOW = TimeWindow(dt.date(2024, 6, 1), dt.date(2024, 9, 1))


@dataclasses.dataclass
class Row:
    mode: str
    tiles: int
    requests: int
    wall_s: float     # whole pipeline, incl. DirectRunner start-up
    seconds: float    # fetch span: first request in to last reply out, as the server saw it
    ok: int
    dead: int

    @property
    def lost(self) -> int:
        return self.tiles - self.ok - self.dead

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds

    @property
    def requests_per_tile(self) -> float:
        return self.requests / self.tiles


def run_pipeline(server: FakeEarthEngine, mode: str, requests: List[TileRequest],
                 s2: earth_engine.S2Settings, ee_settings: earth_engine.EESettings) -> Row:
    before = len(server.calls)
    started = time.perf_counter()
    with beam.Pipeline(runner="DirectRunner") as p:
        out = p | beam.Create(requests) | FetchTiles(s2, ee_settings)
        _ = out.pixels | "CountOk" >> beam.Map(lambda _: Metrics.counter("bench", "ok").inc())
        _ = out[DEAD_LETTER] | "CountDead" >> beam.Map(lambda _: Metrics.counter("bench", "dead").inc())
    wall = time.perf_counter() - started
    counts = {c.key.metric.name: c.committed for c in
              p.result.metrics().query(MetricsFilter().with_namespace("bench"))["counters"]}
    calls = server.calls[before:]
    span = max(c.finished for c in calls) - min(c.started for c in calls)
    return Row(mode, len(requests), len(calls), wall, span, counts.get("ok", 0), counts.get("dead", 0))


def tiles(side: int, tile_px: int) -> List[TileRequest]:
    return [TileRequest(Tile(32632, 100 + ix, 500 + iy, tile_px, 10.0), WINDOW)
            for ix in range(side) for iy in range(side)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16, help="tiles per side of the square region")
    parser.add_argument("--tile-px", type=int, default=256)
    parser.add_argument("--super-tile", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sequential-tiles", type=int, default=32)
    parser.add_argument("--base-ms", type=float, default=300)
    parser.add_argument("--ms-per-mb", type=float, default=50)
    parser.add_argument("--rate-429", type=float, default=0.20)
    parser.add_argument("--rate-500", type=float, default=0.02)
    parser.add_argument("--backoff-base-s", type=float, default=0.25)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    latency = LatencyModel(args.base_ms / 1000, args.ms_per_mb / 1000)
    all_tiles = tiles(args.side, args.tile_px)
    common = dict(max_concurrency=args.concurrency, requests_per_second=1000.0,
                  backoff_base_s=args.backoff_base_s)
    rows = []
    with FakeEarthEngine(latency=latency) as server:
        ee_settings = earth_engine.EESettings(project=PROJECT, endpoint=server.url, credentials="anonymous",
                                              deadline_s=60)
        earth_engine.initialize(ee_settings)
        ours = earth_engine.S2Settings(super_tile=args.super_tile, **common)
        single = earth_engine.S2Settings(super_tile=1, **common)
        sequential = earth_engine.S2Settings(**{**dataclasses.asdict(single), "max_concurrency": 1})
        rows.append(run_pipeline(server, f"super-tile {args.super_tile}x{args.super_tile}, "
                                         f"{args.concurrency} in flight", all_tiles, ours, ee_settings))
        rows.append(run_pipeline(server, f"1 request/tile, {args.concurrency} in flight", all_tiles,
                                 single, ee_settings))
        rows.append(run_pipeline(server, "1 request/tile, sequential",
                                 all_tiles[:args.sequential_tiles], sequential, ee_settings))
        server.reset(faults=FaultRates(rate_429=args.rate_429, rate_500=args.rate_500, seed=1), latency=latency)
        rows.append(run_pipeline(server, f"super-tile, {args.rate_429:.0%} 429 + {args.rate_500:.0%} 500",
                                 all_tiles, ours, ee_settings))

    print(f"\nfake EE latency {args.base_ms:g} ms + {args.ms_per_mb:g} ms/MB per request; "
          f"{args.tile_px} px tiles, {len(all_tiles)} tiles. fetch s = first request to last reply "
          f"at the server (tiles/s uses it); wall s includes DirectRunner start-up")
    print(f"{'mode':42} {'tiles':>6} {'requests':>9} {'req/tile':>9} {'fetch s':>8} {'wall s':>7} "
          f"{'tiles/s':>8} {'ok':>5} {'dead':>5} {'lost':>5}")
    for r in rows:
        print(f"{r.mode:42} {r.tiles:6d} {r.requests:9d} {r.requests_per_tile:9.3f} {r.seconds:8.1f} "
              f"{r.wall_s:7.1f} {r.tiles_per_s:8.1f} {r.ok:5d} {r.dead:5d} {r.lost:5d}")
    ours_row, single_row, _, chaos = rows
    fewer = single_row.requests_per_tile / ours_row.requests_per_tile
    faster = ours_row.tiles_per_s / single_row.tiles_per_s
    checks = [(f"requests per tile {fewer:.1f}x fewer (target >= 10x)", fewer >= 10),
              (f"tiles/s {faster:.1f}x of 1 request/tile at equal concurrency (target >= 3x)", faster >= 3),
              (f"under faults: {chaos.ok} ok + {chaos.dead} dead-lettered of {chaos.tiles}, "
               f"{chaos.lost} lost (target 0)", chaos.lost == 0)]
    for text, passed in checks:
        print(f"  [{'PASS' if passed else 'FAIL'}] {text}")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
