"""Dry-run planning at continent scale (tile counts, seconds, peak Python memory), and the ground covered twice
at zone seams and the equator with all tiles and with ``is_primary`` tiles only (random points, Monte Carlo).

    /work/venv/bin/python benchmarks/bench_plan.py [--tile-px 512] [--scale-m 10] [--seam-points 20000]
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiles import Region, parse_bbox, plan_summary  # noqa: E402

# A rough hand-drawn outline of Africa (lon, lat), only to have a non-rectangular continent.
AFRICA_OUTLINE = [(-17.5, 14.7), (-16.8, 21.3), (-13.0, 27.6), (-9.8, 31.5), (-5.9, 35.8), (10.2, 37.2),
                  (11.1, 33.3), (19.9, 30.3), (32.3, 31.3), (34.2, 27.8), (37.2, 21.0), (43.3, 12.6),
                  (51.3, 11.8), (48.0, 4.5), (39.3, -4.6), (40.5, -15.5), (35.4, -22.0), (32.9, -26.0),
                  (27.9, -33.0), (20.0, -34.8), (18.4, -34.0), (14.5, -22.8), (11.8, -17.0), (13.2, -8.8),
                  (8.8, -1.0), (9.7, 3.9), (4.4, 6.4), (-7.5, 4.4), (-12.5, 7.4), (-15.0, 10.9)]

CASES = {
    "europe bbox -25,35,45,71": lambda: [parse_bbox("-25,35,45,71")],
    "africa bbox -20,-35,52,38": lambda: [parse_bbox("-20,-35,52,38")],
    "africa outline polygon": lambda: [Region("africa", geometry=shapely.Polygon(AFRICA_OUTLINE))],
}


SEAM_CASES = {
    "zone seam 6E, 45-46N": "5.5,45.0,6.5,46.0",
    "zone seam 12E, 60-61N": "11.5,60.0,12.5,61.0",
    "equator, 20-21E": "20.0,-0.5,21.0,0.5",
}


def seam_coverage(bbox: str, tile_px: int, scale_m: float, n_points: int) -> dict:
    """Share of random points of the box covered by 0 / 2+ planned tiles, and by 0 / 2+ primary tiles."""
    import numpy as np

    from tiles.grid import is_primary, tile_footprint_wgs84
    from tiles.planning import expand_shard, plan_shards

    tiles = [t for shard in plan_shards([parse_bbox(bbox)], tile_px, scale_m) for t in expand_shard(shard)]
    footprints = [tile_footprint_wgs84(t, 16) for t in tiles]
    primary = np.array([is_primary(t) for t in tiles])
    w, s, e, n = map(float, bbox.split(","))
    rng = np.random.default_rng(0)
    points = shapely.points(rng.uniform(w, e, n_points), rng.uniform(s, n, n_points))
    hits = shapely.STRtree(footprints).query(points, predicate="within")
    every = np.bincount(hits[0], minlength=n_points)
    prim = np.bincount(hits[0][primary[hits[1]]], minlength=n_points)
    return {"tiles": len(tiles), "primary": int(primary.sum()), "twice": (every >= 2).mean(),
            "gap": (every == 0).mean(), "primary_twice": (prim >= 2).mean(), "primary_gap": (prim == 0).mean()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile-px", type=int, default=512)
    parser.add_argument("--scale-m", type=float, default=10.0)
    parser.add_argument("--seam-points", type=int, default=20000)
    parser.add_argument("--seams-only", action="store_true")
    args = parser.parse_args()
    print(f"seams ({args.tile_px} px tiles, {args.seam_points} random points per 1x1 deg box):")
    print(f"  {'box':26} {'tiles':>6} {'primary':>8} {'covered 2x':>11} {'gap':>6} {'primary 2x':>11} "
          f"{'primary gap':>12}")
    for name, bbox in SEAM_CASES.items():
        c = seam_coverage(bbox, args.tile_px, args.scale_m, args.seam_points)
        print(f"  {name:26} {c['tiles']:6d} {c['primary']:8d} {c['twice']:11.2%} {c['gap']:6.2%} "
              f"{c['primary_twice']:11.2%} {c['primary_gap']:12.2%}")
    if args.seams_only:
        return
    for name, make_regions in CASES.items():
        regions = make_regions()
        tracemalloc.start()
        started = time.perf_counter()
        summary = plan_summary(regions, tile_px=args.tile_px, scale_m=args.scale_m)
        seconds = time.perf_counter() - started
        peak_mib = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
        print(f"{name}: {summary.tiles} tiles in {len(summary.per_zone)} zone grids, {summary.shards} shards, "
              f"{seconds:.2f} s, peak {peak_mib:.1f} MiB traced")


if __name__ == "__main__":
    main()
