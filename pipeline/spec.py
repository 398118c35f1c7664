"""Turn parsed options into a validated `RunSpec`, so bad input fails before any pipeline starts.

Each options class of `pipeline.options` resolves its own flags into its layer's settings object; the RunSpec
holds those objects as they are, and `pipeline.graph` hands each to the transform that owns it.

Every check raises `tiles.InputError` with a message that says what to fix; `pipeline.__main__` prints it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any, Dict, Optional

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipeline.options import EarthEngineOptions, ModelOptions, OutputOptions, RegionOptions, flag_values
from tiles.errors import InputError


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """Where rows, dead letters and the manifest go, and what the launcher does: `OutputOptions` resolved."""

    output: Optional[str]  # without a trailing slash; None only with plan_only
    bigquery_table: Optional[str] = None
    skip_existing: bool = False
    num_shards: int = 0
    max_failed_fraction: float = 0.5
    plan_only: bool = False
    json: bool = False
    calibrate: int = 0
    progress_interval_s: float = 30.0


@dataclasses.dataclass
class RunSpec:
    """Everything a run needs, validated: each concern's settings object as its options class resolved it.
    Built once at launch and shipped to workers inside the transforms."""

    plan: Any  # transforms.plan.PlanSettings
    s2: Any  # earth_engine.S2Settings
    ee: Any  # earth_engine.EESettings
    ee_budget: Any  # earth_engine.EEBudget
    inference: Any  # transforms.inference.InferenceSettings
    out: OutputSettings
    run_id: str
    created_at: dt.datetime
    flags: Dict[str, Any]  # {flag dest: value} of our flags, for the manifest (scrubbed there)
    beam_options: Dict[str, Any]
    runner: str = "DirectRunner"


def resolve(options: PipelineOptions, now: Optional[dt.datetime] = None) -> RunSpec:
    """Validate options into a RunSpec, or raise InputError saying what to fix."""
    out = options.view_as(OutputOptions).to_settings()
    plan = options.view_as(RegionOptions).to_settings()
    check_runner(options)  # the Earth Engine budget depends on the runner
    runner = runner_name(options)
    beam_all = options.get_all_options(drop_default=True)
    try:
        inference = options.view_as(ModelOptions).to_settings()
        s2, ee, budget = options.view_as(EarthEngineOptions).to_settings(
            runner, options.get_all_options(), beam_all.get("project"))
        if budget.set_max_num_workers:  # Dataflow without a ceiling could autoscale past the EE quota
            from apache_beam.options.pipeline_options import WorkerOptions

            options.view_as(WorkerOptions).max_num_workers = budget.set_max_num_workers
    except InputError:
        raise
    except (ValueError, TypeError) as error:
        raise InputError(str(error)) from None

    created_at = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    run_id = f"{created_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    flags = {**flag_values(options), "max_batch_size": inference.max_batch_size}  # the size that ran
    return RunSpec(plan=plan, s2=s2, ee=ee, ee_budget=budget, inference=inference, out=out, run_id=run_id,
                   created_at=created_at, flags=flags, beam_options=beam_all, runner=runner)


def check_runner(options: PipelineOptions) -> None:
    """`--runner` must name a Beam runner (Beam itself would fail only when the pipeline is created)."""
    from apache_beam.runners.runner import create_runner

    name = runner_name(options)
    try:
        create_runner(name)
    except (ValueError, ImportError) as error:
        raise InputError(f"--runner {name!r} is not a Beam runner: {error}") from None


def runner_name(options: PipelineOptions) -> str:
    """The runner the pipeline will use (Beam's default when --runner is not given)."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    return runner if isinstance(runner, str) and runner else "DirectRunner"


def gcs_temp_location(options: PipelineOptions) -> Optional[str]:
    cloud = options.view_as(GoogleCloudOptions)
    return cloud.temp_location or cloud.staging_location
