"""Kill and resume: `python -m pipeline` SIGKILLed part-way, then rerun with --skip-existing, ends with exactly
the planned tile set, no duplicates, and no temp/partial file read as data.

1. A smaller region runs to completion (finished shards exist in --output).
2. The full region with --skip-existing runs as a subprocess against the fake Earth Engine server (slow
   replies, 2 requests in flight) and is SIGKILLed once it has sent a few requests.
   What a kill during Beam's write leaves behind is there too: a `beam-temp-embeddings-*` folder holding a
   complete-looking but never-renamed shard (of tiles that are NOT done) and a truncated one.
3. The full region again with --skip-existing: only the missing tiles are fetched; the temp folder is ignored
   by skip-existing (else its tiles would be lost) and by readers of `embeddings-*.parquet`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import chaos
from tests.fakes.ee_server import LatencyModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_BBOX = "8.0,47.0,8.006,47.004"
KILL_AFTER_CALLS = 4


def _plant_unfinalized_shards(output, keys_not_done, finished_shard):
    """What a run killed between writing a temp shard and renaming it leaves: a folder of temp files."""
    temp = output / "beam-temp-embeddings-20240101T000000-dead00-0123456789abcdef"
    temp.mkdir()
    key_schema = pq.read_schema(finished_shard)
    key_schema = pa.schema([key_schema.field(n) for n in ("tile_id", "start_date", "end_date")])
    rows = []
    for key in keys_not_done:
        tile_id, window = key.split("/")
        start, end = window.split("_")
        rows.append({"tile_id": tile_id, "start_date": pa.scalar(start).cast(pa.date32()).as_py(),
                     "end_date": pa.scalar(end).cast(pa.date32()).as_py()})
    pq.write_table(pa.Table.from_pylist(rows, schema=key_schema), temp / "b1c2d3.embeddings-00000-of-00001.parquet")
    data = open(finished_shard, "rb").read()
    (temp / "e4f5a6.embeddings-00000-of-00001.parquet").write_bytes(data[: len(data) // 2])
    return temp


@pytest.mark.slow
def test_sigkill_then_skip_existing_ends_with_exactly_the_planned_tiles(fake_ee, recipe_checkpoint_b64, tmp_path,
                                                                        model_cache):
    from pipeline.run import launch
    from transforms.write import existing_shards

    server = fake_ee.server
    output = tmp_path / "out"
    full = chaos.pipeline_argv(server.url, output, recipe_checkpoint_b64, extra=["--skip-existing"])
    planned = set(chaos.planned_requests(full))

    # 1. A smaller region, to completion.
    assert launch(chaos.pipeline_argv(server.url, output, recipe_checkpoint_b64, bbox=SMALL_BBOX)) == 0
    first = chaos.audit(output, planned)
    done_first = set(first.embeddings)
    assert 0 < len(done_first) < len(planned) and first.dead_letters == 0

    # 2. The full region, killed part-way.
    server.reset(latency=LatencyModel(base_s=0.3))
    env = {**os.environ, "PYTHONPATH": REPO, "DYNAMICVIS_CACHE_DIR": str(model_cache)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *full, "--ee-max-concurrency", "2"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(server.calls) < KILL_AFTER_CALLS and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        log = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{log[-3000:]}"
    killed_calls = len(server.calls)
    assert KILL_AFTER_CALLS <= killed_calls < len(planned - done_first), "killed too late to prove anything"
    after_kill = chaos.audit(output, planned)
    assert set(after_kill.embeddings) == done_first and after_kill.duplicate_rows == 0, \
        "a killed run must not leave rows that readers take for finished ones"
    temp = _plant_unfinalized_shards(output, sorted(planned - done_first)[:5], existing_shards(str(output))[0])
    assert all("beam-temp" not in shard for shard in existing_shards(str(output)))

    # 3. Resume.
    server.reset()
    assert launch(full) == 0
    final = chaos.audit(output, planned)
    assert final.accounted, final
    assert set(final.embeddings) == planned and final.rows == len(planned) and final.dead_letters == 0
    fetched = {(call.crs, call.transform, call.dates) for call in server.calls}
    assert len(server.calls) == len(fetched) == len(planned - done_first), "resume fetched done tiles again"
    for key in done_first:  # rows of the first run are kept, not rewritten
        assert (final.embeddings[key] == first.embeddings[key]).all()
    assert temp.is_dir(), "readers and skip-existing ignore temp folders; nothing needs deleting them"

    print(f"\nkill/resume: planned {len(planned)}, done by the first run {len(done_first)}, EE requests before "
          f"SIGKILL {killed_calls}, rows after the kill {after_kill.rows}, fetched on resume {len(server.calls)}, "
          f"final rows {final.rows}, duplicates {final.duplicate_rows}, lost {len(final.lost)}")

    # The same job once more: nothing to do, nothing duplicated.
    assert launch(full) == 0
    again = chaos.audit(output, planned)
    assert again.rows == len(planned) and again.duplicate_rows == 0 and len(server.calls) == len(planned - done_first)
