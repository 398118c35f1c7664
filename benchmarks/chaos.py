"""Chaos benchmark: the whole pipeline under Earth Engine faults loses nothing and changes nothing.

Two runs of the real pipeline (`pipeline.run.run`, the code behind `python -m pipeline`) on the DirectRunner,
against the fake Earth Engine REST server driven by the real `ee` client, with a recipe-weight checkpoint
through the real loader:

1. fault-free;
2. chaos: seeded 20 % HTTP 429, 2 % HTTP 500, 1 % stalled requests (held past the client deadline, so they
   become timeouts; one stall is forced), one malformed 200 reply, plus one permanent HTTP 400 for one
   tile/window.
Both runs also have one tile/window with no Sentinel-2 scene (data, not a fault: a NoScenesError letter).

Then it reads the Parquet shards and dead-letter files back and checks, per planned tile/window key: in the
output or in the dead letters (never both, never neither, each letter with a class and a message), no
duplicate rows, and chaos embeddings equal to the fault-free ones. It prints a table and exits 1 if any
check fails.

    /work/venv/bin/python -m benchmarks.chaos                    # 32 tiles, ~1 minute on 2 cores
    /work/venv/bin/python -m benchmarks.chaos --bbox 8.0,47.0,8.03,47.02   # 142 tile requests, ~1 minute

tests/test_reliability_chaos.py runs the same functions with the same assertions (smaller, no backoff waits).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from tests.fakes.ee_server import PROJECT, FakeEarthEngine, Fault, FaultRates

DEFAULT_BBOX = "8.0,47.0,8.012,47.008"  # 4 x 4 tiles of 320 m (32 px at 10 m) near Zurich
START, END = "2024-05-01", "2024-07-01"  # two monthly windows -> 32 tile requests
DEADLINE_S = 1.0     # client deadline: a stalled request (held STALL_S) becomes a retryable timeout
STALL_S = 3.0
CHAOS_RATES = dict(rate_429=0.20, rate_500=0.02, rate_stall=0.01)
MALFORMED_CALL = 3   # the 4th computePixels call gets a 200 whose body is not an NPY array
STALLED_CALL = 5     # ... and the 6th is stalled for sure (on top of the 1 % rate)
TRANSIENT_CLASSES = {"HTTP429", "HTTP500", "TimeoutError", "MalformedResponseError", "ConnectionError",
                     "RemoteDisconnected", "ConnectionResetError"}


def chaos_faults(seed: int) -> FaultRates:
    return FaultRates(malformed_calls=(MALFORMED_CALL,), seed=seed, **CHAOS_RATES)


def pipeline_argv(server_url: str, output: str, checkpoint: str, bbox: str = DEFAULT_BBOX,
                  extra: Sequence[str] = ()) -> List[str]:
    return [f"--bbox={bbox}", "--start", START, "--end", END, "--windows", "monthly", "--output", str(output),
            "--tile-px", "32", "--img-size", "64", "--ee-request-px", str(32 * 32), "--checkpoint", str(checkpoint),
            "--ee-endpoint", server_url, "--ee-credentials", "anonymous", "--ee-project", PROJECT,
            "--max-batch-size", "8", "--progress-interval-s", "3600", *extra]


def planned_requests(argv: Sequence[str]) -> Dict[str, object]:
    """Planned TileRequests by key (tile/window), from the same planner the pipeline uses."""
    from pipeline.run import parse_and_validate
    from tiles.planning import plan_requests

    _, spec = parse_and_validate(argv)
    return {r.key: r for r in plan_requests(spec.plan.regions, spec.plan.windows, spec.plan.tile_px, spec.plan.scale_m)}


@dataclasses.dataclass(frozen=True)
class Scripted:
    """The tile/windows scripted to fail for good: key -> expected dead-letter error class."""

    expected_letters: Dict[str, str]


def script_permanent_failures(server: FakeEarthEngine, requests: Dict[str, object], faults: bool) -> Scripted:
    """A no-scenes area for the last key (always) and, with faults, an HTTP 400 for the first key."""
    from tiles.grid import tile_bounds_utm

    keys = sorted(requests)
    empty = requests[keys[-1]]
    server.add_empty_area(empty.tile.crs, tile_bounds_utm(empty.tile), empty.window.start)
    expected = {empty.key: "NoScenesError"}
    if faults:
        bad = requests[keys[0]]
        xmin, ymin, xmax, ymax = tile_bounds_utm(bad.tile)
        cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
        server.add_rule(lambda call: call.covers(cx, cy) and call.window_start == bad.window.start
                        and call.crs == bad.tile.crs, Fault.HTTP_400)
        expected[bad.key] = "HTTP400"
    return Scripted(expected)


def run_pipeline(argv: Sequence[str], deadline_s: float = DEADLINE_S):
    """The CLI's launch path (validate, preflight, build, run), with a shorter EE client deadline."""
    from pipeline.run import parse_and_validate, run

    options, spec = parse_and_validate(argv)
    spec = dataclasses.replace(spec, ee=dataclasses.replace(spec.ee, deadline_s=deadline_s))
    return run(options, spec)


# ------------------------------------------------------------------------------------------ reading back

def row_key(row: dict) -> str:
    from transforms.schema import row_key as key

    return key(row["tile_id"], row["start_date"], row["end_date"])


def read_rows(output: str) -> List[dict]:
    """Rows of the finished shards only: `<output>/embeddings-*.parquet` (Beam temp dirs never match)."""
    import pyarrow.parquet as pq

    rows: List[dict] = []
    for path in sorted(glob.glob(os.path.join(str(output), "embeddings-*.parquet"))):
        rows += pq.read_table(path, columns=["tile_id", "start_date", "end_date", "embedding"]).to_pylist()
    return rows


def read_dead_letters(output: str) -> List[dict]:
    letters: List[dict] = []
    for path in sorted(glob.glob(os.path.join(str(output), "failed", "dead-letters-*.jsonl"))):
        with open(path) as handle:
            letters += [json.loads(line) for line in handle if line.strip()]
    return letters


@dataclasses.dataclass
class Audit:
    planned: int
    rows: int
    dead_letters: int
    duplicate_rows: int
    duplicate_letters: int
    lost: List[str]
    in_both: List[str]
    unplanned: List[str]
    letters_without_reason: int
    letter_classes: Dict[str, int]
    embeddings: Dict[str, np.ndarray]
    letters: Dict[str, dict]

    @property
    def accounted(self) -> bool:
        return not (self.lost or self.in_both or self.unplanned or self.duplicate_rows or self.duplicate_letters
                    or self.letters_without_reason)


def audit(output: str, planned: Sequence[str]) -> Audit:
    rows, letters = read_rows(output), read_dead_letters(output)
    row_keys = [row_key(r) for r in rows]
    letter_keys = [letter["key"] for letter in letters]
    done, failed, plan = set(row_keys), set(letter_keys), set(planned)
    return Audit(
        planned=len(plan), rows=len(rows), dead_letters=len(letters),
        duplicate_rows=len(row_keys) - len(done), duplicate_letters=len(letter_keys) - len(failed),
        lost=sorted(plan - done - failed), in_both=sorted(done & failed), unplanned=sorted((done | failed) - plan),
        letters_without_reason=sum(1 for x in letters if not (x.get("error_class") and x.get("message"))),
        letter_classes=dict(collections.Counter(x["error_class"] for x in letters)),
        embeddings={k: np.asarray(r["embedding"], np.float32) for k, r in zip(row_keys, rows)},
        letters={x["key"]: x for x in letters})


def max_embedding_difference(a: Audit, b: Audit) -> Optional[float]:
    common = sorted(set(a.embeddings) & set(b.embeddings))
    if not common:
        return None
    return float(max(np.abs(a.embeddings[k] - b.embeddings[k]).max() for k in common))


def server_answers(calls) -> Dict[str, int]:
    names = {Fault.HTTP_429: "429", Fault.HTTP_500: "500", Fault.STALL: "stall", Fault.MALFORMED: "malformed",
             Fault.HTTP_400: "400", 200: "200"}
    counts = collections.Counter(names.get(call.answer, str(call.answer)) for call in calls)
    return {name: counts.get(name, 0) for name in ("200", "429", "500", "stall", "malformed", "400")}


def problems(clean: Audit, chaos: Audit, scripted: Scripted, clean_scripted: Scripted,
             max_attempts: int, atol: float = 1e-5) -> List[str]:
    """Every broken promise, in words (empty = all good)."""
    found = []
    for name, result in (("fault-free", clean), ("chaos", chaos)):
        if not result.accounted:
            found.append(f"{name}: lost={result.lost} in_both={result.in_both} unplanned={result.unplanned} "
                         f"duplicate rows={result.duplicate_rows} duplicate letters={result.duplicate_letters} "
                         f"letters without reason={result.letters_without_reason}")
    if set(clean.letters) != set(clean_scripted.expected_letters):
        found.append(f"fault-free run dead-lettered {sorted(clean.letters)}, expected "
                     f"{sorted(clean_scripted.expected_letters)}")
    for key, error_class in scripted.expected_letters.items():
        got = chaos.letters.get(key, {}).get("error_class")
        if got != error_class:
            found.append(f"chaos: {key} should be dead-lettered as {error_class}, got {got}")
    for key, letter in chaos.letters.items():
        if key in scripted.expected_letters:
            continue
        # Only a transient fault that outlasted every retry may dead-letter another tile.
        if letter["error_class"] not in TRANSIENT_CLASSES or letter["attempts"] < max_attempts:
            found.append(f"chaos: unexpected dead letter {letter}")
    difference = max_embedding_difference(clean, chaos)
    if difference is None or difference > atol:
        found.append(f"chaos embeddings differ from the fault-free run by {difference}")
    missing = set(clean.embeddings) - set(chaos.embeddings) - set(chaos.letters)
    if missing:
        found.append(f"chaos run lacks {sorted(missing)}")
    return found


@dataclasses.dataclass
class RunReport:
    name: str
    audit: Audit
    answers: Dict[str, int]
    wall_s: float


def run_case(server: FakeEarthEngine, name: str, output: str, checkpoint: str, bbox: str,
             faults: Optional[FaultRates]) -> tuple:
    """Reset the server, script it, run the pipeline into `output`, audit. Returns (RunReport, Scripted)."""
    argv = pipeline_argv(server.url, output, checkpoint, bbox)
    requests = planned_requests(argv)
    server.reset(faults=faults or FaultRates())
    scripted = script_permanent_failures(server, requests, faults is not None)
    if faults is not None:
        server.fail_calls([STALLED_CALL], Fault.STALL)
    started = time.perf_counter()
    run_pipeline(argv)
    wall = time.perf_counter() - started
    return RunReport(name, audit(output, list(requests)), server_answers(list(server.calls)), wall), scripted


def table(reports: Sequence[RunReport], difference: Optional[float]) -> str:
    head = (f"{'run':<11} {'planned':>7} {'rows':>5} {'dead':>5} {'lost':>5} {'dups':>5} "
            f"{'EE calls':>8} {'429':>4} {'500':>4} {'stall':>5} {'malf':>4} {'400':>4} {'wall s':>7}  dead letters")
    lines = [head, "-" * len(head)]
    for r in reports:
        a, s = r.audit, r.answers
        lines.append(f"{r.name:<11} {a.planned:>7} {a.rows:>5} {a.dead_letters:>5} {len(a.lost):>5} "
                     f"{a.duplicate_rows + a.duplicate_letters:>5} {sum(s.values()):>8} {s['429']:>4} "
                     f"{s['500']:>4} {s['stall']:>5} {s['malformed']:>4} {s['400']:>4} {r.wall_s:>7.1f}  "
                     f"{json.dumps(a.letter_classes, sort_keys=True)}")
    lines.append(f"max |embedding(chaos) - embedding(fault-free)| over common tiles: {difference}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bbox", default=DEFAULT_BBOX, help=f"region (default {DEFAULT_BBOX}: 32 tile requests)")
    parser.add_argument("--seed", type=int, default=7, help="fault RNG seed (default 7)")
    parser.add_argument("--workdir", default=None, help="where outputs and the checkpoint go (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import earth_engine
    from models.recipe import write_official_checkpoint

    workdir = args.workdir or tempfile.mkdtemp(prefix="chaos-")
    os.environ.setdefault("DYNAMICVIS_CACHE_DIR", os.path.join(workdir, "cache"))
    checkpoint = os.path.join(workdir, "dynamicvis_b_recipe.pth")
    if not os.path.isfile(checkpoint):
        write_official_checkpoint(checkpoint, arch="b", img_size=64)
    for name in ("clean", "chaos"):  # a rerun in the same --workdir starts from empty outputs
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
    with FakeEarthEngine(stall_s=STALL_S) as server:
        clean, clean_scripted = run_case(server, "fault-free", os.path.join(workdir, "clean"), checkpoint,
                                         args.bbox, None)
        chaos, scripted = run_case(server, "chaos", os.path.join(workdir, "chaos"), checkpoint, args.bbox,
                                   chaos_faults(args.seed))
    difference = max_embedding_difference(clean.audit, chaos.audit)
    print(f"faults: {CHAOS_RATES} + malformed reply to call #{MALFORMED_CALL} + stall of call #{STALLED_CALL} + "
          f"HTTP 400 for "
          f"{[k for k, v in scripted.expected_letters.items() if v == 'HTTP400']}; seed {args.seed}; "
          f"client deadline {DEADLINE_S:g} s, stalls held {STALL_S:g} s; outputs in {workdir}")
    print(table([clean, chaos], difference))
    found = problems(clean.audit, chaos.audit, scripted, clean_scripted, earth_engine.S2Settings().max_attempts)
    for problem in found:
        print("PROBLEM:", problem)
    print("result:", "every tile embedded or dead-lettered with a reason, no duplicates, embeddings unchanged"
          if not found else f"{len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
