"""Dry-run planning at continent scale: tile counts, seconds and peak Python memory.

    /work/venv/bin/python benchmarks/bench_plan.py [--tile-px 512] [--scale-m 10]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile-px", type=int, default=512)
    parser.add_argument("--scale-m", type=float, default=10.0)
    args = parser.parse_args()
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
