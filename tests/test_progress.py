"""Progress on DirectRunner: a bar redrawn in place when stderr is a terminal, the periodic log line otherwise.

Both run a real Beam pipeline through `CountProgress` in a child process whose stderr is a pseudo-terminal
or a pipe."""
import os
import pty
import subprocess
import sys
import textwrap

from transforms.progress import format_bar, format_progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = textwrap.dedent("""
    import logging
    import apache_beam as beam
    from transforms import progress

    logging.basicConfig(level=logging.INFO)
    progress.start_run()
    with beam.Pipeline("DirectRunner") as p:
        _ = p | "Done" >> beam.Create(range(6)) | "D" >> beam.ParDo(progress.CountProgress(progress.DONE, 9, 0.0))
        _ = p | "Failed" >> beam.Create(range(2)) | "F" >> beam.ParDo(progress.CountProgress(progress.FAILED, 9, 0.0))
        _ = p | "Skipped" >> beam.Create([0]) | "S" >> beam.ParDo(progress.CountProgress(progress.SKIPPED, 9))
    progress.end_bar()
    print("finished", flush=True)
""")


def _environment():
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_bar_and_log_line_format():
    bar = format_bar(done=10, failed=1, skipped=1, total=40, elapsed_s=11.0)
    assert bar.startswith("[" + "#" * 8 + "-" * 20 + "] 12/40 tiles")
    assert "10 done  1 failed  1 skipped  1.00 tiles/s  ETA 28s" in bar
    assert format_bar(3, 0, 0, None, 1.5).startswith("3 tiles  3 done")
    assert format_progress(10, 1, 40, 11.0, skipped=1) == (
        "progress: 10 done, 1 failed, 1 skipped, 28 remaining of 40, 1.00 tiles/s, ETA 28s")


def test_a_terminal_gets_a_progress_bar_that_ends_on_its_own_line():
    leader, follower = pty.openpty()
    child = subprocess.Popen([sys.executable, "-c", PIPELINE], stdout=subprocess.PIPE, stderr=follower,
                             env=_environment(), cwd=ROOT)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out, _ = child.communicate(timeout=120)
    os.close(leader)
    terminal = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")  # the tty's own CR of a newline
    assert child.returncode == 0, terminal
    assert terminal.count("\r[") >= 2  # redrawn in place
    final = terminal.split("\r")[-1]
    assert final.startswith("[" + "#" * 28 + "] 9/9 tiles  6 done  2 failed  1 skipped")
    assert final.endswith("ETA 0s\x1b[K\n")  # finished: the line is ended, once
    assert "progress: " not in terminal  # the bar replaces the log line
    assert out.decode().strip() == "finished"


def test_without_a_terminal_the_log_line_reports_progress():
    child = subprocess.run([sys.executable, "-c", PIPELINE], capture_output=True, env=_environment(), cwd=ROOT,
                           timeout=120)
    assert child.returncode == 0, child.stderr.decode()
    err = child.stderr.decode()
    assert "\r[" not in err
    lines = [line for line in err.splitlines() if "dynamicvis.progress" in line]
    assert lines and "remaining of 9" in lines[-1] and "tiles/s" in lines[-1]
