"""Command-line options of the pipeline: one Beam `PipelineOptions` subclass per concern, as Beam cuts its own.

    RegionOptions       where and when: regions, time windows, the tile grid
    EarthEngineOptions  what to fetch from Sentinel-2 and how hard to push Earth Engine
    ModelOptions        the model and its RunInference batching
    OutputOptions       where rows, dead letters and the manifest go, and what the launcher does

Each class owns its flags and turns them into its layer's settings object (`to_settings()`), validated, with
the flag's dest read straight off the view: a setting is named in its flag and in the settings field it feeds,
and nowhere in between (docs/ARCHITECTURE.md, "From flag to code").

Being PipelineOptions subclasses lets Beam's own flags (`--runner`, `--direct_num_workers`, `--project`, ...)
sit beside ours on one command line. Every flag is spelled with dashes (`--tile-px`) and also accepts the
underscore spelling (`--tile_px`), because Beam re-creates options on workers from their dest names.

Note: `--dry-run` (ours: print the plan and exit) is not Beam's `--dry_run` (DataflowRunner: translate
the job without submitting it); they have different dests.
"""
from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from apache_beam.options.pipeline_options import PipelineOptions

from tiles.errors import InputError

if TYPE_CHECKING:  # the settings' modules import Beam transforms, EE and torch: only when resolving
    from earth_engine import EEBudget, EESettings, S2Settings
    from pipeline.spec import OutputSettings
    from transforms.inference import InferenceSettings
    from transforms.plan import PlanSettings

_BQ_TABLE = re.compile(r"^[A-Za-z0-9_.:-]+[:.][A-Za-z0-9_]+\.[A-Za-z0-9_$-]+$")
_HF_CHECKPOINT = re.compile(r"^hf://[^/\s]+/[^/\s]+/\S+$")


def _flag(parser, name: str, underscore_alias: bool = True, **kwargs) -> None:
    dest = name.replace("-", "_")
    spellings = [f"--{name}"] + ([f"--{dest}"] if dest != name and underscore_alias else [])
    parser.add_argument(*spellings, dest=kwargs.pop("dest", dest), **kwargs)


def _bool(value: str) -> bool:
    from models.booleans import parse_bool  # here: importing models loads torch

    try:
        return parse_bool(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}") from None


class RegionOptions(PipelineOptions):
    """Where and when: the regions, the time windows and the tile grid -> `transforms.plan.PlanSettings`."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        g = parser.add_argument_group("regions (at least one)")
        _flag(g, "bbox", default=None, metavar="W,S,E,N",
              help="lon/lat box west,south,east,north (write --bbox=-10,40,-5,45 when W is negative)")
        _flag(g, "geojson", default=None, metavar="PATH",
              help="GeoJSON file (local or gs://) with Polygon/MultiPolygon features")
        _flag(g, "points", default=None, metavar="CSV",
              help="CSV of lon,lat[,id] points; each becomes a square of --buffer-m around it")
        _flag(g, "buffer-m", type=float, default=None,
              help="half the side (metres) of the square around each --points point; 0 = a --tile-px square")
        _flag(g, "points-mode", default="chip", choices=["chip", "grid"],
              help="chip (default): one chip per point, centred on it within half a pixel; grid: the grid "
                   "tiles the point's square touches")
        _flag(g, "request-id", default=None, help="name of the request (default: derived from the input)")

        g = parser.add_argument_group("time")
        _flag(g, "start", default=None, metavar="YYYY-MM-DD", help="window start (inclusive)")
        _flag(g, "end", default=None, metavar="YYYY-MM-DD", help="window end (exclusive)")
        _flag(g, "year", type=int, default=None, help="shorthand for --start YEAR-01-01 --end YEAR+1-01-01")
        _flag(g, "windows", default=None, choices=["monthly", "quarterly", "yearly"],
              help="split [start, end) into calendar windows (default: one window)")

        g = parser.add_argument_group("tiles")
        _flag(g, "tile-px", type=int, default=512, help="tile size in pixels (default 512)")
        _flag(g, "scale-m", type=float, default=10.0, help="pixel size in metres (default 10)")

    def to_settings(self) -> "PlanSettings":
        """The validated plan settings (`transforms.plan.PlanSettings`); raises InputError saying what to fix."""
        from tiles.grid import validate_grid
        from tiles.regions import load_regions
        from tiles.time_windows import parse_windows
        from transforms.plan import PlanSettings

        _positive("tile_px", self.tile_px, 8)
        if not self.scale_m or self.scale_m <= 0:
            raise InputError(f"--scale-m must be > 0, got {self.scale_m}")
        validate_grid(self.tile_px, self.scale_m)
        regions = load_regions(bbox=self.bbox, geojson=self.geojson, points=self.points, buffer_m=self.buffer_m,
                               request_id=self.request_id)
        windows = parse_windows(self.start, self.end, self.year, self.windows or "none")
        return PlanSettings(regions=regions, windows=windows, tile_px=self.tile_px, scale_m=self.scale_m,
                            points_mode=self.points_mode)


class EarthEngineOptions(PipelineOptions):
    """The Sentinel-2 image and the Earth Engine connection and quota -> `earth_engine` settings."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        g = parser.add_argument_group("Sentinel-2")
        _flag(g, "cloudy-pct", type=float, default=30.0, help="max scene CLOUDY_PIXEL_PERCENTAGE (default 30)")
        _flag(g, "composite", default="median", help="median | mosaic (default median)")
        _flag(g, "cloud-mask", default=None, help="none | cloud_score_plus | scl (default none)")
        _flag(g, "min-valid-fraction", type=float, default=0.0,
              help="tiles with fewer valid pixels are dead-lettered (default 0)")
        _flag(g, "ee-request-px", type=int, default=None,
              help="pixel target per Earth Engine request, for latency (default: as many as EE's 48 MiB rule "
                   "allows, 4,194,304 px; tile_px squared = one request per tile)")

        g = parser.add_argument_group("Earth Engine")
        _flag(g, "ee-project", default=None, help="Earth Engine / Cloud project")
        _flag(g, "ee-endpoint", default=None,
              help="Earth Engine API base URL (default: the high-volume endpoint)")
        _flag(g, "ee-credentials", default="adc",
              help="'adc' (Application Default Credentials, default), 'anonymous' (local test servers; "
                   "needs --ee-project) or a service-account key file")
        _flag(g, "ee-quota-concurrent", type=int, default=40,
              help="the EE project's concurrent-request quota, split over the fetching processes (default 40)")
        _flag(g, "ee-quota-rps", type=float, default=100.0,
              help="the EE project's requests/s quota, split over the fetching processes (default 100)")
        _flag(g, "ee-max-concurrency", type=int, default=None,
              help="concurrent EE requests per fetching process (default: the project quota over the processes)")
        _flag(g, "ee-requests-per-s", type=float, default=None,
              help="EE requests/s per fetching process (default: the project quota over the processes)")
        _flag(g, "ee-workers", type=int, default=None,
              help="fetching processes sharing the EE quota (default: from the runner, see docs/DEPLOY.md: "
                   "DirectRunner's workers in multi_processing mode, Dataflow's max workers x SDK processes)")

    def to_settings(self, runner: str, all_options: Dict[str, Any], beam_project: Optional[str] = None
                    ) -> Tuple["S2Settings", "EESettings", "EEBudget"]:
        """(S2Settings, EESettings, EEBudget) for this runner; `all_options` are every option (Beam's included),
        from which the budget reads the worker counts; `--ee-project` falls back to Beam's `--project`.
        Raises InputError (or ValueError / earth_engine.QuotaError) saying what to fix."""
        import earth_engine

        budget = earth_engine.ee_budget(
            runner, all_options, self.ee_quota_concurrent, self.ee_quota_rps, processes=self.ee_workers,
            max_concurrency=self.ee_max_concurrency, requests_per_s=self.ee_requests_per_s)
        s2 = earth_engine.S2Settings(
            cloudy_pct=self.cloudy_pct, composite=self.composite,
            cloud_mask=None if self.cloud_mask in (None, "none") else self.cloud_mask,
            min_valid_fraction=self.min_valid_fraction, request_px=self.ee_request_px,
            max_concurrency=budget.max_concurrency_per_process,
            requests_per_second=budget.requests_per_s_per_process)
        connection = {"endpoint": self.ee_endpoint} if self.ee_endpoint else {}
        ee = earth_engine.EESettings(project=self.ee_project or beam_project,
                                     credentials=self.ee_credentials or "adc", **connection)
        return s2, ee, budget


# ModelOptions flags that are `models.ModelConfig` fields of the same name (unset: env, then default).
MODEL_CONFIG_FLAGS = ("checkpoint", "arch", "img_size", "path_type", "sampling_scale", "mamba2", "scan",
                      "precision", "device")


class ModelOptions(PipelineOptions):
    """The model and its batching -> `transforms.inference.InferenceSettings` (with a `models.ModelConfig`)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        g = parser.add_argument_group("model")
        _flag(g, "checkpoint", default=None,
              help="hf://REPO/FILE, a local path or gs:// URI (default: the card's HF checkpoint)")
        _flag(g, "arch", default=None, help="b | l | auto (env RS_EMBED_DYNAMICVIS_ARCH)")
        _flag(g, "img-size", type=int, default=None,
              help="model input size (env RS_EMBED_DYNAMICVIS_IMG, default 512)")
        _flag(g, "path-type", default=None, help="env RS_EMBED_DYNAMICVIS_PATH_TYPE")
        _flag(g, "sampling-scale", type=float, default=None, help="env RS_EMBED_DYNAMICVIS_SAMPLING_SCALE")
        _flag(g, "mamba2", type=_bool, default=None, help="env RS_EMBED_DYNAMICVIS_MAMBA2")
        _flag(g, "scan", default=None, help="selective-scan backend: auto | reference | chunked | cpu_fused | cuda "
                                                "| triton (auto: the fastest that works on the device)")
        _flag(g, "precision", default=None,
              help="auto (default: bf16 where it is faster -- CUDA, CPUs with AVX512-BF16/AMX -- else fp32) "
                   "| fp32 | bf16")
        _flag(g, "device", default=None, help="auto | cpu | cuda[:N]")
        _flag(g, "pooling", default="mean", choices=["mean", "max"], help="feature-map pooling (default mean)")
        _flag(g, "grid", action="store_true", default=False,
              help="also write the last-stage feature map (D,H,W) (Parquet only)")
        _flag(g, "min-batch-size", type=int, default=1, help="RunInference min batch size")
        _flag(g, "max-batch-size", type=int, default=None,
              help="RunInference max batch size (default: 16 on CPU; with --gpu, sized from its memory)")
        _flag(g, "gpu", default=None, metavar="ACCELERATOR",
              help="GPU resource hint for the inference step, e.g. nvidia-l4 or "
                   "'type:nvidia-l4;count:1;install-nvidia-driver'")

    def to_settings(self) -> "InferenceSettings":
        """The validated inference settings (`transforms.inference.InferenceSettings`); model flags left unset
        fall back to the RS_EMBED_DYNAMICVIS_* env, then defaults. Raises InputError / ValueError."""
        import models
        from transforms.inference import InferenceSettings, default_max_batch_size

        _positive("min_batch_size", self.min_batch_size)
        max_batch_size = self.max_batch_size
        if max_batch_size is None:
            max_batch_size = default_max_batch_size(self.gpu, self.img_size, self.arch)
        _positive("max_batch_size", max_batch_size, self.min_batch_size)
        if self.img_size is not None:
            _positive("img_size", self.img_size, 32)
        _check_checkpoint(self.checkpoint)
        model = models.ModelConfig.from_env(**{name: getattr(self, name) for name in MODEL_CONFIG_FLAGS})
        return InferenceSettings(model=model, pooling=self.pooling, grid=self.grid,
                                 min_batch_size=self.min_batch_size, max_batch_size=max_batch_size, gpu=self.gpu)


class OutputOptions(PipelineOptions):
    """Where the outputs go and what the launcher does -> `pipeline.spec.OutputSettings`."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        g = parser.add_argument_group("output")
        _flag(g, "output", default=None, metavar="DIR_OR_GS_URI",
              help="Parquet shards, dead letters and the manifest go here")
        _flag(g, "bigquery-table", default=None, metavar="PROJECT:DATASET.TABLE",
              help="also write rows to BigQuery (file loads)")
        _flag(g, "skip-existing", action="store_true", default=False,
              help="skip tiles already in the output; required to write into a non-empty output")
        _flag(g, "num-shards", type=int, default=0,
              help="ignored: rows are written as a file per batch; merge them with python -m pipeline.compact")
        _flag(g, "max-failed-fraction", type=float, default=0.5,
              help="exit 1 (after writing everything) when more than this fraction of the tiles tried, or all "
                   "of them, were dead-lettered (default 0.5)")
        _flag(g, "dry-run", underscore_alias=False, dest="plan_only", action="store_true", default=False,
              help="print tiles, EE requests, bytes and time at the quota, then exit")
        _flag(g, "json", action="store_true", default=False, help="with --dry-run: print the plan as one JSON object")
        _flag(g, "calibrate", type=int, default=0, metavar="N",
              help="with --dry-run: fetch and embed N sampled request blocks against the configured EE endpoint "
                   "and estimate wall time and cost from the measured figures")
        _flag(g, "progress-interval-s", type=float, default=30.0, help="seconds between progress log lines")

    def to_settings(self) -> "OutputSettings":
        """The validated output settings (`pipeline.spec.OutputSettings`); raises InputError saying what to fix."""
        from pipeline.spec import OutputSettings

        if not self.plan_only and not self.output:
            raise InputError("--output is required: a local directory or gs://bucket/prefix for the Parquet "
                             "shards, dead letters and manifest (or use --dry-run to only print the plan)")
        if self.bigquery_table and not _BQ_TABLE.match(self.bigquery_table):
            raise InputError(f"--bigquery-table {self.bigquery_table!r}: expected PROJECT:DATASET.TABLE")
        if self.calibrate and self.calibrate < 0:
            raise InputError(f"--calibrate must be >= 1 request blocks, got {self.calibrate}")
        if (self.json or self.calibrate) and not self.plan_only:
            raise InputError("--json and --calibrate only apply with --dry-run")
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise InputError(f"--max-failed-fraction must be between 0 and 1, got {self.max_failed_fraction:g}")
        return OutputSettings(
            output=self.output.rstrip("/") if self.output else None, bigquery_table=self.bigquery_table,
            skip_existing=self.skip_existing, num_shards=self.num_shards,
            max_failed_fraction=self.max_failed_fraction, plan_only=self.plan_only, json=self.json,
            calibrate=self.calibrate or 0, progress_interval_s=self.progress_interval_s)


# Our flags, by concern, in --help order.
OPTION_CLASSES = (RegionOptions, EarthEngineOptions, ModelOptions, OutputOptions)


def add_our_flags(parser) -> None:
    """Every flag of `python -m pipeline` (besides Beam's own) on `parser`, e.g. for --help."""
    for cls in OPTION_CLASSES:
        cls._add_argparse_args(parser)  # noqa: SLF001


def flag_values(options: PipelineOptions) -> Dict[str, Any]:
    """{flag dest: value} of every flag of ours, as given or defaulted (the record a manifest keeps)."""
    values: Dict[str, Any] = {}
    for cls in OPTION_CLASSES:
        values.update(options.view_as(cls).get_all_options(current_only=True))
    return values


def _positive(name: str, value, minimum=1) -> None:
    if value is None or value < minimum:
        raise InputError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


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


def _all_options_parser() -> argparse.ArgumentParser:
    """A parser that knows every registered PipelineOptions flag (Beam's and ours), as Beam builds it."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser  # noqa: SLF001

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen: Dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # noqa: SLF001
    return parser


def unknown_arguments(argv: Sequence[str]) -> List[str]:
    """Arguments neither Beam nor we know (Beam itself only logs and drops them)."""
    _, unknown = _all_options_parser().parse_known_args(list(argv))
    return [a for a in unknown if a.startswith("-")] or list(unknown)
