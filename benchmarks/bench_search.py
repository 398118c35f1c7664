"""Search and map over a large synthetic run: `pipeline.similar` (DuckDB) and `pipeline.map`, seconds and peak RSS.

    python benchmarks/bench_search.py                       # 1,000,000 rows x 768 floats (~3 GB of Parquet)
    python benchmarks/bench_search.py --rows 200000 --dim 256

The run is written with the real schema (tests/synthetic_run.py): 10,000 tiles repeated over one-day windows,
random embeddings. Each measurement is a fresh process (peak RSS from wait4). The reference, in the same run,
is what one would write by hand: numpy over the same Parquet batches with a running top-k, which also checks
that DuckDB's hits are the exact top-k. The map draws one window (10,000 tiles) but streams every row twice
(the run-wide sample for the colour basis, then the drawing pass); `map (basis saved)` skips the fitting.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIMILAR = """
import json, sys, time
from pipeline import sample, similar
files = sample.shard_files(sys.argv[1])
window = sample.pick_window(files, sys.argv[3])
t0 = time.perf_counter()
vector, _ = similar.query_vector(files, sys.argv[2], window)
t1 = time.perf_counter()
hits = similar.nearest(files, vector, int(sys.argv[4]))
t2 = time.perf_counter()
print(json.dumps({"lookup_s": t1 - t0, "search_s": t2 - t1, "hits": [[h.tile_id, str(h.start_date)] for h in hits]}))
"""

NUMPY = """
import json, sys, time
import numpy as np
from pipeline import sample, similar
files = sample.shard_files(sys.argv[1])
window = sample.pick_window(files, sys.argv[3])
vector, _ = similar.query_vector(files, sys.argv[2], window)
k = int(sys.argv[4])
q = vector / np.linalg.norm(vector)
t0 = time.perf_counter()
best = np.empty(0); keys = []
for batch in sample.iter_batches(files, ["tile_id", "start_date", "embedding"], 65536):
    m = sample.vectors(batch.column("embedding"))
    cos = (m @ q) / np.linalg.norm(m, axis=1)
    top = np.argpartition(-cos, min(k, len(cos) - 1))[:k]
    ids, days = batch.column("tile_id").to_pylist(), batch.column("start_date").to_pylist()
    best = np.concatenate([best, cos[top]]); keys += [[ids[i], str(days[i])] for i in top]
    order = np.argsort(-best, kind="stable")[:k]; best = best[order]; keys = [keys[i] for i in order]
print(json.dumps({"search_s": time.perf_counter() - t0, "hits": keys}))
"""


def measure_rss(argv):
    """(wall seconds, peak RSS MiB, stdout) of a child process."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    out = child.stdout.read()
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status:
        raise SystemExit(f"{' '.join(argv[:4])} failed: {err.decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out.decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--dir", help="where to write the run (default: a temporary directory, removed after)")
    args = parser.parse_args()

    from tests.synthetic_run import WINDOW, tiles_block, write_large_run

    directory = args.dir or tempfile.mkdtemp(prefix="bench-search-")
    try:
        start = time.perf_counter()
        if not any(n.startswith("embeddings-") for n in os.listdir(directory)):
            write_large_run(directory, args.rows, args.dim)
        size = sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory)) / 2 ** 20
        print(f"run: {args.rows} rows x {args.dim} floats, {size:.0f} MiB of Parquet "
              f"(ready in {time.perf_counter() - start:.0f} s)", flush=True)
        query = tiles_block(32632, 1400, 15000, 100, 100)[4321].tile_id
        day = WINDOW.start.isoformat()
        python = sys.executable
        rows = []

        wall, rss, out = measure_rss([python, "-c", SIMILAR, directory, query, day, str(args.k)])
        duck = json.loads(out.strip().splitlines()[-1])
        rows.append(("similar: DuckDB top-k search", duck["search_s"], rss))
        rows.append(("similar: query-row lookup", duck["lookup_s"], None))
        wall_cli, rss_cli, _ = measure_rss([python, "-m", "pipeline.similar", "--input", directory,
                                            "--tile-id", query, "--window", day, "--k", str(args.k)])
        rows.append(("similar: CLI end to end", wall_cli, rss_cli))
        _, rss_np, out = measure_rss([python, "-c", NUMPY, directory, query, day, str(args.k)])
        reference = json.loads(out.strip().splitlines()[-1])
        rows.append(("reference: numpy streaming top-k", reference["search_s"], rss_np))
        same = duck["hits"] == reference["hits"]

        png = os.path.join(directory, "bench-map.png")
        wall_map, rss_map, _ = measure_rss([python, "-m", "pipeline.map", "--input", directory, "--window", day,
                                            "--png", png, "--refit"])
        rows.append(("map: fit basis + draw, CLI", wall_map, rss_map))
        wall_map2, rss_map2, _ = measure_rss([python, "-m", "pipeline.map", "--input", directory, "--window", day,
                                              "--png", png])
        rows.append(("map: basis saved, draw, CLI", wall_map2, rss_map2))

        print(f"\n{'step':<36} {'seconds':>8} {'peak RSS MiB':>13}")
        for name, seconds, peak in rows:
            print(f"{name:<36} {seconds:8.2f} {'' if peak is None else f'{peak:13.0f}'}")
        print(f"\nDuckDB / numpy search time: {duck['search_s'] / reference['search_s']:.2f}x; "
              f"same top-{args.k}: {same}")
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
