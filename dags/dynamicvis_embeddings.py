"""Airflow DAG: one Dataflow job per calendar month embedding a configured region (`python -m pipeline`).

Each run covers its data interval [data_interval_start, data_interval_end) (the pipeline's --end is exclusive)
and writes to its own folder `<output_root>/<YYYY-MM>`, with --skip-existing: a retry or a re-run of the same
month resumes from the tiles already written instead of duplicating them.

Settings (see docs/DEPLOY.md): each one is read, when the task runs, from the DAG param of the same name
(trigger-time conf), else the Airflow Variable `dynamicvis_<name>`, else the default in SETTINGS. The Dataflow
options mirror ./run_dataflow.sh's default (--gpu-mode step); tests/test_dag.py checks they agree.

This file must not import the project (the scheduler parses it): the job runs as a subprocess,
`$DYNAMICVIS_PYTHON -m pipeline ...` on the Airflow worker, where the environment variable DYNAMICVIS_PYTHON
(default python3) names an interpreter with the project installed (a CPU torch build is enough to launch).
"""
from __future__ import annotations

import os

import pendulum
from jinja2 import pass_context

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import DAG, Param
from airflow.timetables.interval import CronDataIntervalTimetable

DAG_ID = "dynamicvis_embeddings_monthly"
REQUIRED = None  # marks a setting without default: the task fails with a message naming it

# name: (default, what it is). Every setting of the job, documented once.
SETTINGS = {
    "project": (REQUIRED, "Cloud project running the Dataflow job (and billed for Earth Engine unless ee_project)"),
    "region": ("us-central1", "Dataflow region; needs L4 quota (NVIDIA_L4_GPUS)"),
    "temp_location": (REQUIRED, "gs://BUCKET/PATH for Dataflow temporary files"),
    "staging_location": ("", "gs://BUCKET/PATH for staged files; empty: <temp_location>/staging"),
    "image": (REQUIRED, "worker image built from ./Dockerfile, REGISTRY/PATH:TAG"),
    "accelerator": ("nvidia-l4", "GPU type of the inference workers (one per worker, driver installed)"),
    "gpu_machine_type": ("g2-standard-8", "machine type of the GPU (inference) workers"),
    "machine_type": ("n2-standard-4", "machine type of the CPU workers (planning, Earth Engine fetch, writing)"),
    "max_workers": ("10", "autoscaling ceiling"),
    "disk_size_gb": ("100", "worker boot disk (GB); the CUDA image needs >= 50"),
    "service_account": ("", "worker service account email; empty: the project's default"),
    "ee_project": ("", "Earth Engine project; empty: project"),
    "ee_quota_concurrent": ("40", "the EE project's concurrent-request quota (the pipeline splits it over the "
                                  "fetching processes)"),
    "ee_quota_rps": ("100", "the EE project's requests/s quota (the pipeline splits it over the fetching processes)"),
    "region_geojson": (REQUIRED, "GeoJSON (gs://...) of the region to embed"),
    "output_root": (REQUIRED, "gs://BUCKET/PATH; each month writes to <output_root>/<YYYY-MM>"),
    "checkpoint": ("", "model checkpoint (hf://, gs:// or a path in the image); empty: the pipeline's default"),
    "max_batch_size": ("16", "RunInference max batch size per GPU"),
}


class EmbeddingPipelineOperator(BeamRunPythonPipelineOperator):
    """BeamRunPythonPipelineOperator that drops pipeline options rendered empty (optional settings left unset)."""

    def render_template_fields(self, context, jinja_env=None) -> None:
        super().render_template_fields(context, jinja_env)
        self.pipeline_options = {k: v for k, v in self.pipeline_options.items() if v not in ("", None)}


@pass_context
def setting(context, name: str) -> str:
    """Value of a setting at render time: DAG param > Variable dynamicvis_<name> > default."""
    default, _ = SETTINGS[name]
    value = context["params"].get(name)
    if value in (None, ""):
        value = context["var"]["value"].get(f"dynamicvis_{name}", default)
    if value is REQUIRED:
        raise ValueError(f"setting {name!r} is not set: pass the DAG param {name!r} or set the Airflow Variable "
                         f"'dynamicvis_{name}' ({SETTINGS[name][1]})")
    return str(value)


def _s(name: str) -> str:
    return "{{ setting('%s') }}" % name


GPU_HINT = ("type:{{ setting('accelerator') }};count:1;install-nvidia-driver;"
            "machine_type:{{ setting('gpu_machine_type') }}")
MONTH = "{{ data_interval_start.strftime('%Y-%m') }}"

with DAG(
    dag_id=DAG_ID,
    description="DynamicVis Sentinel-2 embeddings, one Dataflow GPU job per month",
    # Data intervals [1st of month, 1st of next month): the pipeline's --start / exclusive --end.
    schedule=CronDataIntervalTimetable("0 0 1 * *", timezone="UTC"),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,  # history: `airflow backfill create --dag-id ... --from-date ... --to-date ...`
    max_active_runs=1,  # one job at a time: GPU and Earth Engine quotas are per project
    params={name: Param(None, type=["null", "string"], description=doc) for name, (_, doc) in SETTINGS.items()},
    user_defined_macros={"setting": setting},
    default_args={
        "owner": "dynamicvis",
        "retries": 2,
        "retry_delay": pendulum.duration(minutes=30),
        "retry_exponential_backoff": True,
    },
    tags=["dynamicvis", "dataflow", "gpu"],
) as dag:
    embed_month = EmbeddingPipelineOperator(
        task_id="embed_month",
        runner="DataflowRunner",
        py_interpreter=os.environ.get("DYNAMICVIS_PYTHON", "python3"),
        py_options=["-m"],
        py_file="pipeline",
        pipeline_options={
            # Dataflow (project and region come from dataflow_config)
            "temp_location": _s("temp_location"),
            "staging_location": ("{{ setting('staging_location') or "
                                 "(setting('temp_location').rstrip('/') ~ '/staging') }}"),
            "experiments": ["use_runner_v2"],
            "max_num_workers": _s("max_workers"),
            "disk_size_gb": _s("disk_size_gb"),
            "machine_type": _s("machine_type"),
            "sdk_container_image": _s("image"),
            "sdk_location": "container",
            # pipeline
            "ee-project": "{{ setting('ee_project') or setting('project') }}",
            "gpu": GPU_HINT,
            "ee-quota-concurrent": _s("ee_quota_concurrent"),
            "ee-quota-rps": _s("ee_quota_rps"),
            "geojson": _s("region_geojson"),
            "start": "{{ data_interval_start | ds }}",
            "end": "{{ data_interval_end | ds }}",
            "output": "{{ setting('output_root').rstrip('/') }}/" + MONTH,
            "skip-existing": True,
            "max-batch-size": _s("max_batch_size"),
            "checkpoint": _s("checkpoint"),  # empty: option dropped, the pipeline's default
        },
        dataflow_config={
            "job_name": "dynamicvis-embed-" + MONTH,  # the operator appends a unique suffix
            "project_id": _s("project"),
            "location": _s("region"),
            "service_account": _s("service_account"),  # empty: the project's default
            "wait_until_finished": True,
        },
    )
