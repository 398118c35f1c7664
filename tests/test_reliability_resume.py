"""Kill and resume: `python -m pipeline` SIGKILLed part-way keeps what it finished; the rerun with
--skip-existing fetches only the rest and ends with exactly the planned tile set, no duplicates.

1. The whole region runs as a subprocess (its own process group: the SDK worker processes of
   `--direct_running_mode multi_processing` die with it) against the fake Earth Engine server, and is
   SIGKILLed once at least a third of the planned rows are durable in `<output>/embeddings-*.parquet`.
   What a kill during a file write leaves behind is there too: a `.tmp-embeddings-*` file holding a
   truncated copy (never renamed), which no reader and not skip-existing may take for data.
2. The same command with --skip-existing: only the tiles missing from the output are fetched; the final
   set equals the plan with zero duplicate rows.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks import chaos

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = "4"  # rows per inference batch, hence per incremental file


def durable_rows(output) -> int:
    from transforms.durable_write import embedding_files, row_count

    total = 0
    for path in embedding_files(str(output)):
        try:
            total += row_count(path)
        except FileNotFoundError:  # replaced between listing and reading (a retried batch rewrites its file)
            pass
    return total


def _kill_once_a_third_is_durable(argv, env, output, planned: int):
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while durable_rows(output) * 3 < planned and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        log = proc.communicate(timeout=60)[0].decode(errors="replace")
    return proc.returncode, log


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["in_memory", "multi_processing"])
def test_sigkill_keeps_finished_rows_and_the_rerun_fetches_only_the_rest(mode, fake_ee, recipe_checkpoint_b64,
                                                                         tmp_path, model_cache, caplog):
    from pipeline.run import launch

    server = fake_ee.server
    output = tmp_path / "out"
    beam_flags = [f"--direct_running_mode={mode}"] + (["--direct_num_workers=2"] if mode == "multi_processing" else [])
    argv = chaos.pipeline_argv(server.url, output, recipe_checkpoint_b64,
                               extra=["--max-batch-size", BATCH, *beam_flags])
    planned = set(chaos.planned_requests(argv))

    # 1. Killed part-way.
    env = {**os.environ, "PYTHONPATH": REPO, "DYNAMICVIS_CACHE_DIR": str(model_cache), "TMPDIR": "/tmp"}
    code, log = _kill_once_a_third_is_durable(argv, env, output, len(planned))
    assert code == -signal.SIGKILL, f"the run ended before it was killed:\n{log[-3000:]}"
    after_kill = chaos.audit(output, planned)
    durable = set(after_kill.embeddings)
    assert 3 * len(durable) >= len(planned), f"only {len(durable)} of {len(planned)} rows durable at the kill"
    assert len(durable) < len(planned), "killed too late to prove anything"
    assert after_kill.duplicate_rows == 0 and not after_kill.unplanned
    first_file = sorted(output.glob("embeddings-*.parquet"))[0]
    partial = output / f".tmp-{first_file.name}-deadbeef"  # what a kill in the middle of a write leaves
    partial.write_bytes(first_file.read_bytes()[: first_file.stat().st_size // 2])

    # 2. Resume.
    server.reset()
    assert launch([*argv, "--skip-existing"]) == 0
    final = chaos.audit(output, planned)
    assert final.accounted, final
    assert set(final.embeddings) == planned and final.rows == len(planned) and final.duplicate_rows == 0
    fetched = {(call.crs, call.transform, call.dates) for call in server.calls}
    assert len(server.calls) == len(fetched) == len(planned - durable), "the rerun fetched durable tiles again"
    for key in durable:  # rows written before the kill are kept, not rewritten
        assert (final.embeddings[key] == after_kill.embeddings[key]).all()
    assert partial.exists(), "readers and skip-existing ignore temporary files; nothing needs deleting them"
    if mode == "in_memory":  # (with multi_processing the line is logged by an SDK worker process)
        assert (f"skip-existing: {len(durable)} of {len(planned)} planned tiles already in the output; fetching "
                f"{len(planned - durable)}") in caplog.text
    manifest = (output / "manifest.json").read_text()
    print(f"\nkill/resume ({mode}): planned {len(planned)}, rows durable after SIGKILL {len(durable)}, "
          f"fetched on resume {len(server.calls)}, final rows {final.rows}, duplicates {final.duplicate_rows}, "
          f"lost {len(final.lost)}")
    assert f'"rows_before_run": {len(durable)}' in manifest and f'"rows_in_output": {len(planned)}' in manifest

    # The same job once more: nothing to do, nothing duplicated.
    server.reset()
    assert launch([*argv, "--skip-existing"]) == 0
    again = chaos.audit(output, planned)
    assert again.rows == len(planned) and again.duplicate_rows == 0 and not server.calls


def _all_empty(server, requests):
    from tiles.grid import tile_bounds_utm

    for request in requests:
        server.add_empty_area(request.tile.crs, tile_bounds_utm(request.tile), request.window.start)


def test_a_run_whose_tiles_all_failed_writes_everything_then_exits_non_zero(fake_ee, recipe_checkpoint_b64,
                                                                           tmp_path, model_cache, capsys):
    from pipeline.run import launch

    output = tmp_path / "out"
    argv = chaos.pipeline_argv(fake_ee.server.url, output, recipe_checkpoint_b64, bbox="8.0,47.0,8.003,47.002")
    planned = chaos.planned_requests(argv)
    _all_empty(fake_ee.server, planned.values())
    assert launch([*argv, "--max-failed-fraction", "1"]) == 1
    err = capsys.readouterr().err
    assert f"error: {len(planned)} of {len(planned)} tiles were dead-lettered" in err and "failed/" in err
    written = chaos.audit(output, planned)
    assert written.accounted and written.dead_letters == len(planned) and written.rows == 0
    assert (output / "manifest.json").is_file()


def test_more_than_max_failed_fraction_dead_lettered_exits_non_zero(fake_ee, recipe_checkpoint_b64, tmp_path,
                                                                    model_cache, capsys):
    from pipeline.run import launch

    argv = chaos.pipeline_argv(fake_ee.server.url, tmp_path / "a", recipe_checkpoint_b64, bbox="8.0,47.0,8.003,47.002")
    planned = chaos.planned_requests(argv)
    _all_empty(fake_ee.server, [planned[sorted(planned)[0]]])  # one of the tiles fails
    assert launch(argv) == 0  # under the default fraction
    assert launch(chaos.pipeline_argv(fake_ee.server.url, tmp_path / "b", recipe_checkpoint_b64,
                                      bbox="8.0,47.0,8.003,47.002", extra=["--max-failed-fraction", "0.05"])) == 1
    assert f"1 of {len(planned)} tiles were dead-lettered (more than --max-failed-fraction 0.05)" in \
        capsys.readouterr().err
    assert launch([*argv, "--max-failed-fraction", "1.5"]) == 2
    assert "--max-failed-fraction must be between 0 and 1" in capsys.readouterr().err
