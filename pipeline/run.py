"""Launch: parse and validate the command line, print the plan (--dry-run) or build and run the pipeline.

Everything that can be wrong with the user's input is checked here, before a pipeline object exists.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional, Sequence, TextIO, cast

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from pipeline import options as options_lib
from pipeline.spec import RunSpec, check_runner, gcs_temp_location, resolve, runner_name
from tiles.errors import InputError

LOGGER = logging.getLogger("dynamicvis")
_COORDINATE_FLAGS = ("--bbox",)
EXIT_USAGE = 2
EXIT_TILES_FAILED = 1  # everything was written, but too many tiles were dead-lettered
BIGQUERY_LAUNCH_TIMEOUT_S = 60.0  # how long the launcher retries looking up --bigquery-table


def glue_negative_values(argv: Sequence[str]) -> List[str]:
    """`--bbox -10,40,-5,45` -> `--bbox=-10,40,-5,45` (argparse would take '-10,...' for a flag)."""
    out: List[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        if args[i] in _COORDINATE_FLAGS and i + 1 < len(args) and args[i + 1][:1] == "-" \
                and args[i + 1][1:2].isdigit():
            out.append(f"{args[i]}={args[i + 1]}")
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


def print_help(stream: Optional[TextIO] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="DynamicVis embeddings of Sentinel-2 RGB tiles, as an Apache Beam pipeline. "
                    "Beam's own flags (--runner, --direct_num_workers, --project, --region, ...) work too.")
    options_lib.add_our_flags(parser)
    parser.print_help(stream or sys.stdout)


def parse_and_validate(argv: Sequence[str]) -> tuple:
    """(PipelineOptions, RunSpec) or InputError. Unknown flags are errors (Beam would only warn)."""
    argv = glue_negative_values(argv)
    unknown = options_lib.unknown_arguments(argv)
    if unknown:
        raise InputError(f"unknown option(s): {' '.join(unknown)} (see python -m pipeline --help)")
    options = PipelineOptions(argv)
    return options, resolve(options)


def check_output_writable(output: str) -> None:
    """A local `--output` must be a directory we can create files in (gs:// is checked by the write itself)."""
    import os
    import tempfile

    if "://" in output:
        return
    if os.path.exists(output) and not os.path.isdir(output):
        raise InputError(f"--output {output} is not a directory (it is a file); choose a directory path")
    try:
        os.makedirs(output, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".write-check-"):
            pass
    except OSError as error:
        raise InputError(f"--output {output} is not writable ({error.strerror or error}); choose a directory "
                         f"you can write to") from None


def check_output(spec: RunSpec) -> List[str]:
    """Existing embedding files of `--output`; refuse a non-empty output without --skip-existing."""
    from transforms.write import embedding_files

    output = cast(str, spec.out.output)  # None only with --dry-run, which writes nothing
    check_output_writable(output)
    shards = embedding_files(output)
    if shards and not spec.out.skip_existing:
        raise InputError(f"--output {spec.out.output} already holds {len(shards)} embedding shard(s); pass "
                         f"--skip-existing to embed only the tiles missing there, or choose an empty --output")
    return shards


def check_bigquery_table(spec: RunSpec) -> Optional[int]:
    """Rows already in `--bigquery-table` (None: no such table yet); refuse a non-empty table without
    --skip-existing, and say what to fix when BigQuery cannot be reached."""
    if not spec.out.bigquery_table:
        return None
    import google.api_core.exceptions
    import google.auth.exceptions

    from transforms.write import bigquery_row_count

    try:
        rows = bigquery_row_count(spec.out.bigquery_table, BIGQUERY_LAUNCH_TIMEOUT_S)
    except google.auth.exceptions.DefaultCredentialsError:
        raise InputError(f"--bigquery-table {spec.out.bigquery_table}: no Application Default Credentials for "
                         f"BigQuery; run `gcloud auth application-default login`") from None
    except (google.api_core.exceptions.GoogleAPIError, google.auth.exceptions.GoogleAuthError,
            OSError) as error:
        raise InputError(f"--bigquery-table {spec.out.bigquery_table}: could not look the table up in BigQuery "
                         f"({type(error).__name__}: {error}); check the project, your credentials and the "
                         f"network") from None
    if rows and not spec.out.skip_existing:
        raise InputError(f"--bigquery-table {spec.out.bigquery_table} already holds {rows} row(s); pass "
                         f"--skip-existing to embed only the tiles missing there, or choose another table")
    return rows


def check_credentials(spec: RunSpec) -> None:
    """Earth Engine credentials that cannot work fail here, not in every worker's setup."""
    import os

    from earth_engine.settings import ADC, ANONYMOUS, credential_source

    kind = spec.ee.credentials
    source = credential_source(kind)
    if source == ANONYMOUS:
        return
    if source == ADC:
        import google.auth
        import google.auth.exceptions

        try:
            google.auth.default()
        except google.auth.exceptions.DefaultCredentialsError:
            raise InputError("no Application Default Credentials for Earth Engine: run `gcloud auth "
                             "application-default login`, or pass --ee-credentials KEY.json "
                             "(or --ee-credentials anonymous --ee-project P for a local test server)") from None
    elif "://" in kind:
        raise InputError(f"--ee-credentials {kind!r}: a key file must be a local path; on Dataflow use 'adc' "
                         "(the worker service account) rather than shipping a key")
    elif not os.path.isfile(kind):
        raise InputError(f"--ee-credentials {kind!r} is neither 'adc', 'anonymous' nor a readable key file")


def runs_locally(options: PipelineOptions) -> bool:
    """Whether the workers share this machine's file system (DirectRunner and friends)."""
    return runner_name(options).split(".")[-1] in ("DirectRunner", "PrismRunner", "InteractiveRunner",
                                                   "SwitchingDirectRunner")


def check_model(spec: RunSpec, options: PipelineOptions) -> None:
    """The scan backend name and a local checkpoint (readable, no pickled code run, keys/shapes of the arch)
    are checked on the launcher, so a bad one fails here instead of in every worker. hf:// and gs://
    checkpoints are fetched by the workers only, and so is a path that exists only on remote workers
    (weights baked into the worker image). The converted weights land in the cache the workers use."""
    import os

    from models.checkpoint import CheckpointError, load_backbone_weights
    from models.scan import resolve_scan

    model = spec.inference.model
    if model.scan != "auto":
        try:
            resolve_scan(model.scan, "cpu")
        except ValueError as error:
            raise InputError(f"--scan: {error}") from None
        except RuntimeError:
            pass  # a known backend that this launcher cannot run (e.g. cuda): the workers decide
    if "://" in model.checkpoint:
        return
    if not os.path.exists(model.checkpoint) and not runs_locally(options):
        LOGGER.info("--checkpoint %s is not on this machine: the workers must have it (e.g. in their image)",
                    model.checkpoint)
        return
    try:
        load_backbone_weights(model.checkpoint, model.arch, model.resolved_cache_dir)
    except CheckpointError as error:
        raise InputError(f"--checkpoint: {error}") from None


def run(options: PipelineOptions, spec: RunSpec, wait: bool = True):
    """Build and run the pipeline; returns the PipelineResult."""
    from apache_beam.options.pipeline_options import TestOptions

    from pipeline import graph
    from transforms import progress

    check_runner(options)
    translate_only = options.view_as(TestOptions).dry_run  # Beam's --dry_run=True: translate only
    if not translate_only:
        check_credentials(spec)
    check_model(spec, options)
    shards = check_output(spec)
    if shards:
        LOGGER.info("skip-existing: reading tile keys (key columns only) from %d existing file(s)", len(shards))
    if not translate_only and check_bigquery_table(spec):
        LOGGER.info("skip-existing: reading tile keys from BigQuery table %s", spec.out.bigquery_table)
    options.view_as(SetupOptions).save_main_session = False
    pipeline = beam.Pipeline(options=options)
    graph.build(pipeline, spec, shards, bigquery_temp=gcs_temp_location(options))
    progress.start_run()
    result = pipeline.run()
    if wait:
        result.wait_until_finish()
        progress.end_bar()
    return result


def summary(result) -> str:
    from transforms.progress import DONE, FAILED, PLANNED, SKIPPED, query_counters

    counts = query_counters(result)
    return (f"finished: {counts[DONE]} tiles embedded, {counts[FAILED]} dead-lettered, "
            f"{counts[SKIPPED]} skipped as already present ({counts[PLANNED]} fetched)")


def too_many_failed(result, fraction: float) -> Optional[str]:
    """Why the run should exit non-zero: every tile it tried, or more than `fraction` of them, was
    dead-lettered (None: it did well enough, or tried nothing)."""
    from transforms.progress import DONE, FAILED, query_counters

    counts = query_counters(result)
    tried = counts[DONE] + counts[FAILED]
    if not tried or not counts[FAILED]:
        return None
    if counts[FAILED] == tried or counts[FAILED] / tried > fraction:
        return (f"{counts[FAILED]} of {tried} tiles were dead-lettered (more than --max-failed-fraction "
                f"{fraction:g}); their reasons are in the failed/ folder of --output")
    return None


def launch(argv: Sequence[str]) -> int:
    """CLI entry: exit code 0 on success, 2 on bad input (with a message on stderr), 1 when everything was
    written but every tile, or more than --max-failed-fraction of them, was dead-lettered."""
    if any(a in ("-h", "--help") for a in argv):
        print_help()
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    LOGGER.setLevel(logging.INFO)
    try:
        options, spec = parse_and_validate(argv)
        if spec.out.plan_only:
            from pipeline import dry_run

            print(dry_run.main(spec))
            return 0
        LOGGER.info("run %s on %s -> %s", spec.run_id, runner_name(options), spec.out.output)
        result = run(options, spec)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    LOGGER.info("%s", summary(result))
    print(summary(result))
    failed = too_many_failed(result, float(spec.out.max_failed_fraction))
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        return EXIT_TILES_FAILED
    return 0
