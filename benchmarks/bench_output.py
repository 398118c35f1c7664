"""Output benchmark: durable incremental files against Beam's end-of-job Parquet sink, and the skip-existing
key scan.

1. End to end (the code behind `python -m pipeline`, DirectRunner, fake Earth Engine server, recipe-weight
   checkpoint, 64 tile requests): wall time with the durable writer (a file per inference batch) against the
   sink the pipeline used before (`beam.io.WriteToParquet`, finalised at the end of the job), alternating,
   median of `--repeats`. Both must write the same keys.
2. Key scan of `--key-rows` rows (default 1 M) in incremental files of `--rows-per-file` rows and in
   compacted shards: what skip-existing reads per file (key columns only, a record batch at a time,
   vectorized keys), against reading the same key columns as Python rows (Beam's ReadAllFromParquet way),
   and the pipeline's own step (`ReadExistingKeys`, counted, on DirectRunner). Each scan runs in a fresh
   process, so the peak RSS is its own.

    /work/main/.venv/bin/python -m benchmarks.bench_output                 # ~5 minutes on 2 cores
    /work/main/.venv/bin/python -m benchmarks.bench_output --key-rows 100000 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------- end to end

def _reference_sink():
    """The sink the pipeline had before durable output: Beam's WriteToParquet, renamed into place at the end."""
    import apache_beam as beam

    from transforms import schema
    from transforms.durable_write import join_path

    class WriteToParquetAtTheEnd(beam.PTransform):
        def __init__(self, output, grid, run_config, max_rows, max_age_s=0.0):
            super().__init__()
            self._prefix = join_path(output, "embeddings-reference")
            self._schema = schema.arrow_schema(grid=grid, run_config=run_config)

        def expand(self, rows):
            return (rows
                    | "WriteToParquet" >> beam.io.WriteToParquet(
                        self._prefix, self._schema, file_name_suffix=".parquet", codec="snappy",
                        record_batch_size=256, row_group_buffer_size=16 * 1024 * 1024)
                    | "Written" >> beam.Map(lambda path: (path, 0)))

    return WriteToParquetAtTheEnd


def end_to_end(workdir: str, repeats: int) -> List[dict]:
    from unittest import mock

    from benchmarks import chaos
    from models.recipe import write_official_checkpoint
    from pipeline import read_embeddings
    from tests.fakes.ee_server import FakeEarthEngine
    from transforms import write

    checkpoint = os.path.join(workdir, "dynamicvis_b_recipe.pth")
    os.environ.setdefault("DYNAMICVIS_CACHE_DIR", os.path.join(workdir, "cache"))
    write_official_checkpoint(checkpoint, arch="b", img_size=64)
    sinks = {"incremental": write.WriteEmbeddingFiles, "reference (WriteToParquet)": _reference_sink()}
    times = {name: [] for name in sinks}
    files, keys = {}, {}
    with FakeEarthEngine() as server:
        for repeat in range(repeats + 1):  # the first round warms caches and is not counted
            for name, sink in (sinks.items() if repeat % 2 else reversed(list(sinks.items()))):
                output = os.path.join(workdir, f"out-{len(times[name])}-{name.split()[0]}")
                shutil.rmtree(output, ignore_errors=True)
                # 16 tiles x 4 monthly windows = 64 tile requests
                argv = chaos.pipeline_argv(server.url, output, checkpoint, extra=["--end", "2024-09-01"])
                server.reset()
                started = time.perf_counter()
                with mock.patch.object(write, "WriteEmbeddingFiles", sink):
                    chaos.run_pipeline(argv)
                wall = time.perf_counter() - started
                if repeat:
                    times[name].append(wall)
                files[name] = len(write.embedding_files(output))
                keys[name] = sorted(read_embeddings(output, columns=[])["tile_id"].to_pylist())
                planned = len(chaos.planned_requests(argv))
    assert keys["incremental"] == keys["reference (WriteToParquet)"] and len(keys["incremental"]) == planned == 64
    reference = statistics.median(times["reference (WriteToParquet)"])
    return [{"sink": name, "tiles": planned, "files": files[name], "median_s": statistics.median(t),
             "runs": len(t), "ratio": statistics.median(t) / reference} for name, t in times.items()]


# ------------------------------------------------------------------------------------------- key scan

def make_output(path: str, rows: int, rows_per_file: int, dim: int = 128) -> int:
    """`rows` distinct keys in files of the production schema (a template of real encoded rows, the tile ids
    varied), `rows_per_file` rows each. Returns the number of files."""
    import numpy as np
    import pyarrow as pa
    from tests.fixtures import output_rows
    from transforms import durable_write

    os.makedirs(path, exist_ok=True)
    template = durable_write.rows_table(output_rows.rows(min(rows_per_file, 1024), dim=dim), False, {"bench": 1})
    count = 0
    for start in range(0, rows, rows_per_file):
        n = min(rows_per_file, rows - start)
        part = template.take(pa.array(np.arange(n) % template.num_rows))
        ids = pa.array([f"32632_32px10m_{(start + i) % 1000}_{(start + i) // 1000}" for i in range(n)])
        part = part.set_column(0, part.schema.field(0), ids)  # distinct keys (footprints stay the template's)
        name = f"embeddings-{start:012d}.parquet"
        durable_write.publish(os.path.join(path, name), durable_write.parquet_bytes(part))
        count += 1
    return count


_SCAN = r"""
import json, sys, time
def peak_mb():  # VmHWM: this process image's own peak (ru_maxrss would carry the forking parent's over exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
from transforms.durable_write import embedding_files
imports_mb = peak_mb()
from transforms.skip_existing import file_keys
from transforms.rows import key_of_row
import pyarrow.parquet as pq
path, how = sys.argv[1], sys.argv[2]
started = time.perf_counter()
n, files = 0, embedding_files(path)
if how == "beam":  # the pipeline's own step, on DirectRunner, counted
    import apache_beam as beam
    from transforms.skip_existing import ReadExistingKeys
    with beam.Pipeline() as pipeline:
        _ = (pipeline | ReadExistingKeys(files) | beam.combiners.Count.Globally()
             | beam.Map(lambda c: open(sys.argv[3], "w").write(str(c))))
    n = int(open(sys.argv[3]).read())
for f in (files if how != "beam" else []):
    if how == "keys":
        for keys in file_keys(f):
            n += len(keys)
    else:  # Python rows of the key columns, as ReadAllFromParquet(columns=...) + key_of_row produce them
        for batch in pq.ParquetFile(f).iter_batches(columns=["tile_id", "start_date", "end_date"]):
            n += len([key_of_row(r) for r in batch.to_pylist()])
print(json.dumps({"rows": n, "files": len(files), "s": time.perf_counter() - started, "imports_mb": imports_mb,
                  "peak_mb": peak_mb()}))
"""


_COMPACT = r"""
import json, sys, time
def peak_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
from pipeline.compact import compact
from transforms.durable_write import embedding_files, row_count
imports_mb = peak_mb()
started = time.perf_counter()
shards = compact(sys.argv[1])
print(json.dumps({"rows": sum(map(row_count, shards)), "files": len(shards), "s": time.perf_counter() - started,
                  "imports_mb": imports_mb, "peak_mb": peak_mb()}))
"""


def key_scan(workdir: str, rows: int, rows_per_file: int) -> List[dict]:
    results = []
    incremental = os.path.join(workdir, "keys-incremental")
    make_output(incremental, rows, rows_per_file)
    compacted = os.path.join(workdir, "keys-compacted")
    shutil.copytree(incremental, compacted)
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-c", _COMPACT, compacted], env=env, capture_output=True, text=True,
                         check=True).stdout
    results.append({"layout": "compaction", "how": "all files", **json.loads(out.strip().splitlines()[-1])})
    for layout, path in (("incremental", incremental), ("compacted", compacted)):
        for how, arg in (("keys", "keys"), ("python rows", "rows"), ("beam step", "beam")):
            out = subprocess.run([sys.executable, "-c", _SCAN, path, arg, os.path.join(workdir, "count")],
                                 env=env, capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            assert result["rows"] == rows, result
            results.append({"layout": layout, "how": how, **result})
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed end-to-end runs per sink (default 3)")
    parser.add_argument("--key-rows", type=int, default=1_000_000, help="rows for the key scan (default 1 M)")
    parser.add_argument("--rows-per-file", type=int, default=256,
                        help="rows per incremental file (one inference batch; default 256)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # the fake server's keep-alive pool is small
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-output-")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"CPU: {cpu}; load average {os.getloadavg()[0]:.1f}; workdir {workdir}")
    if not args.skip_end_to_end:
        print("\nend to end, 64 tile requests (DirectRunner, fake Earth Engine, arch b img 64, batch 8)")
        print(f"{'sink':<28} {'files':>5} {'median s':>9} {'runs':>5} {'vs reference':>12}")
        for r in end_to_end(workdir, args.repeats):
            print(f"{r['sink']:<28} {r['files']:>5} {r['median_s']:>9.2f} {r['runs']:>5} {r['ratio']:>11.2f}x")
    print(f"\nkey scan for --skip-existing, {args.key_rows} rows ({args.rows_per_file} rows per incremental file; "
          f"compaction: into shards, default settings)")
    print(f"{'layout':<12} {'read as':<12} {'files':>6} {'seconds':>8} {'peak RSS MB':>12} {'after imports':>14}")
    for r in key_scan(workdir, args.key_rows, args.rows_per_file):
        print(f"{r['layout']:<12} {r['how']:<12} {r['files']:>6} {r['s']:>8.2f} {r['peak_mb']:>12.0f} "
              f"{r['imports_mb']:>14.0f}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
