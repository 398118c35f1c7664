"""Turn parsed options into a validated `RunSpec`, so bad input fails before any pipeline starts.

Every check raises `tiles.InputError` with a message that says what to fix; `pipeline.__main__` prints it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from typing import Any, Dict, List, Optional

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipeline.options import EmbeddingOptions
from tiles.errors import InputError
from tiles.records import TimeWindow

MODEL_OPTION_NAMES = ("checkpoint", "arch", "img_size", "path_type", "sampling_scale", "mamba2", "scan",
                      "precision", "device")
_BQ_TABLE = re.compile(r"^[A-Za-z0-9_.:-]+[:.][A-Za-z0-9_]+\.[A-Za-z0-9_$-]+$")
_HF_CHECKPOINT = re.compile(r"^hf://[^/\s]+/[^/\s]+/\S+$")


@dataclasses.dataclass
class RunSpec:
    """Everything a run needs, validated; built once at launch and shipped to workers inside the transforms."""

    regions: List[Any]  # tiles.regions.Region
    windows: List[TimeWindow]
    tile_px: int
    scale_m: float
    s2: Any  # earth_engine.S2Settings
    ee: Any  # earth_engine.EESettings
    model: Any  # models.ModelConfig
    pooling: str
    grid: bool
    min_batch_size: int
    max_batch_size: int
    gpu: Optional[str]
    output: Optional[str]
    bigquery_table: Optional[str]
    skip_existing: bool
    num_shards: int
    plan_only: bool
    progress_interval_s: float
    run_id: str
    created_at: dt.datetime
    our_options: Dict[str, Any]
    beam_options: Dict[str, Any]
    points_mode: str = "chip"
    ee_budget: Any = None  # earth_engine.EEBudget
    runner: str = "DirectRunner"
    json: bool = False
    calibrate: int = 0


def _check_checkpoint(checkpoint: Optional[str]) -> None:
    if checkpoint is None or checkpoint.startswith("gs://"):
        return
    if checkpoint.startswith("hf://"):
        if not _HF_CHECKPOINT.match(checkpoint):
            raise InputError(f"--checkpoint {checkpoint!r}: expected hf://OWNER/REPO/FILE, "
                             f"e.g. hf://KyanChen/DynamicVis/<file>.pth")
        return
    if "://" in checkpoint:
        raise InputError(f"--checkpoint {checkpoint!r}: use hf://OWNER/REPO/FILE, a local path or a gs:// URI")
    # Whether a local path exists is checked at launch (pipeline.run.check_model), which knows the runner.


def _positive(name: str, value, minimum=1) -> None:
    if value is None or value < minimum:
        raise InputError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def model_overrides(ours: Dict[str, Any]) -> Dict[str, Any]:
    """The model options the user set; unset ones fall back to RS_EMBED_DYNAMICVIS_* env, then defaults."""
    return {name: ours[name] for name in MODEL_OPTION_NAMES if ours.get(name) is not None}


def resolve(options: PipelineOptions, now: Optional[dt.datetime] = None) -> RunSpec:
    """Validate options into a RunSpec, or raise InputError saying what to fix."""
    import earth_engine
    import models
    from tiles.grid import validate_grid
    from tiles.regions import load_regions
    from tiles.time_windows import parse_windows

    ours = options.view_as(EmbeddingOptions).get_all_options(current_only=True)
    beam_all = options.get_all_options(drop_default=True)

    if not ours["plan_only"] and not ours["output"]:
        raise InputError("--output is required: a local directory or gs://bucket/prefix for the Parquet shards, "
                         "dead letters and manifest (or use --dry-run to only print the plan)")
    if ours["bigquery_table"] and not _BQ_TABLE.match(ours["bigquery_table"]):
        raise InputError(f"--bigquery-table {ours['bigquery_table']!r}: expected PROJECT:DATASET.TABLE")
    _positive("tile_px", ours["tile_px"], 8)
    if not ours["scale_m"] or ours["scale_m"] <= 0:
        raise InputError(f"--scale-m must be > 0, got {ours['scale_m']}")
    _positive("min_batch_size", ours["min_batch_size"])
    if ours["max_batch_size"] is None:
        from transforms.inference import default_max_batch_size

        ours["max_batch_size"] = default_max_batch_size(ours["gpu"], ours["img_size"], ours["arch"])
    _positive("max_batch_size", ours["max_batch_size"], ours["min_batch_size"])
    if ours["img_size"] is not None:
        _positive("img_size", ours["img_size"], 32)
    _check_checkpoint(ours["checkpoint"])
    validate_grid(ours["tile_px"], ours["scale_m"])
    regions = load_regions(bbox=ours["bbox"], geojson=ours["geojson"], points=ours["points"],
                           buffer_m=ours["buffer_m"], request_id=ours["request_id"])
    windows = parse_windows(ours["start"], ours["end"], ours["year"], ours["windows"] or "none")

    if ours["calibrate"] and ours["calibrate"] < 0:
        raise InputError(f"--calibrate must be >= 1 request blocks, got {ours['calibrate']}")
    if (ours["json"] or ours["calibrate"]) and not ours["plan_only"]:
        raise InputError("--json and --calibrate only apply with --dry-run")
    check_runner(options)  # the Earth Engine budget depends on the runner
    runner = runner_name(options)
    try:
        budget = earth_engine.ee_budget(
            runner, options.get_all_options(), ours["ee_quota_concurrent"], ours["ee_quota_rps"],
            processes=ours["ee_workers"], max_concurrency=ours["ee_max_concurrency"],
            requests_per_s=ours["ee_requests_per_s"])
        s2 = earth_engine.S2Settings(
            cloudy_pct=ours["cloudy_pct"], composite=ours["composite"],
            cloud_mask=None if ours["cloud_mask"] in (None, "none") else ours["cloud_mask"],
            min_valid_fraction=ours["min_valid_fraction"], request_px=ours["ee_request_px"],
            max_concurrency=budget.max_concurrency_per_process,
            requests_per_second=budget.requests_per_s_per_process)
        ee_kwargs = {"project": ours["ee_project"] or beam_all.get("project"),
                     "credentials": ours["ee_credentials"] or "adc"}
        if ours["ee_endpoint"]:
            ee_kwargs["endpoint"] = ours["ee_endpoint"]
        ee_settings = earth_engine.EESettings(**ee_kwargs)
        model = models.ModelConfig.from_env(**model_overrides(ours))
        if budget.set_max_num_workers:  # Dataflow without a ceiling could autoscale past the EE quota
            from apache_beam.options.pipeline_options import WorkerOptions

            options.view_as(WorkerOptions).max_num_workers = budget.set_max_num_workers
    except InputError:
        raise
    except (ValueError, TypeError) as error:
        raise InputError(str(error)) from None

    created_at = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    run_id = f"{created_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    return RunSpec(
        regions=regions, windows=windows, tile_px=ours["tile_px"], scale_m=ours["scale_m"], s2=s2,
        ee=ee_settings, model=model, pooling=ours["pooling"], grid=ours["grid"],
        min_batch_size=ours["min_batch_size"], max_batch_size=ours["max_batch_size"], gpu=ours["gpu"],
        output=ours["output"].rstrip("/") if ours["output"] else None, bigquery_table=ours["bigquery_table"],
        skip_existing=ours["skip_existing"], num_shards=ours["num_shards"], plan_only=ours["plan_only"],
        progress_interval_s=ours["progress_interval_s"], run_id=run_id, created_at=created_at,
        our_options=ours, beam_options=beam_all, points_mode=ours["points_mode"], ee_budget=budget, runner=runner,
        json=ours["json"], calibrate=ours["calibrate"] or 0)


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
