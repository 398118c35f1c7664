"""The graph that pipeline/graph.py builds, translated by DataflowRunner offline (Beam's --dry_run=True).

First the job as ./run_dataflow.sh launches it: the command comes from `run_dataflow.sh --dry-run`; its pipeline
arguments go through the CLI's own entry (`pipeline.run.parse_and_validate` + `pipeline.run.run`), exactly as
`python -m pipeline` would take them. Translation only: Earth Engine and the model are booby-trapped, the GCS
listing of --output is stubbed. Then the whole graph from CLI arguments: GPU hint on the inference step only, fetch
and inference not fused, BigQuery file loads with the explicit schema.
"""
import os
import pathlib
import shlex
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGE = "us-central1-docker.pkg.dev/my-proj/images/dynamicvis:0.1.0"
LAUNCHER = ["--project", "my-proj", "--region", "us-central1", "--temp-location", "gs://my-bucket/tmp",
            "--image", IMAGE]
PIPELINE = ["--bbox", "8.0,47.0,8.05,47.05", "--start", "2024-06-01", "--end", "2024-07-01",
            "--output", "gs://my-bucket/emb/test", "--skip-existing"]
ACCELERATOR_URN = "beam:resources:accelerator:v1"


def launcher_command(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAFLOW_")}
    env["DATAFLOW_JOB_NAME"] = "translation-test"
    proc = subprocess.run(["bash", str(ROOT / "run_dataflow.sh"), "--dry-run", *LAUNCHER, *extra, "--", *PIPELINE],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    command = shlex.split(proc.stdout)
    assert command[1:3] == ["-m", "pipeline"]
    return command[3:]


@pytest.fixture
def translate(monkeypatch):
    """argv (as `python -m pipeline` gets it) -> the translated Dataflow job, without submitting it."""
    from pipeline import run as cli

    def forbidden(*_args, **_kwargs):
        raise AssertionError("translation must not contact Earth Engine or load the model")

    import ee

    monkeypatch.setattr(ee, "Initialize", forbidden)
    monkeypatch.setattr("transforms.inference.DynamicVisModelHandler.load_model", forbidden)
    monkeypatch.setattr(cli, "check_output", lambda spec: [])  # would list gs://.../emb/test

    def _translate(argv):
        options, spec = cli.parse_and_validate([*argv, "--dry_run=True"])
        result = cli.run(options, spec)
        return result.job

    return _translate


def environments_by_transform(job):
    """{transform unique name: its environment} of every transform that runs in an environment."""
    components = job.proto_pipeline.components
    return {t.unique_name: components.environments[t.environment_id]
            for t in components.transforms.values() if t.environment_id}


def dataflow_environment(job):
    """The job's Dataflow `Environment` message (workers, experiments, service options) as Beam builds it at
    submission; dry runs stop before that step, so build it here the same way, offline."""
    from apache_beam.runners.dataflow.internal import apiclient

    return apiclient.Environment(
        packages=[], options=job.options, environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url="gs://my-bucket/tmp/staging/pipeline.pb", proto_pipeline=job.proto_pipeline).proto


def container_image(environment):
    from apache_beam.portability.api import beam_runner_api_pb2

    return beam_runner_api_pb2.DockerPayload.FromString(environment.payload).container_image


def test_step_mode_puts_the_gpu_on_the_inference_step_only(translate):
    job = translate(launcher_command([]))
    envs = environments_by_transform(job)
    hinted = {name for name, env in envs.items() if ACCELERATOR_URN in env.resource_hints}
    assert hinted and all(name.startswith("Embed/") for name in hinted), sorted(hinted)
    for name in hinted:
        assert envs[name].resource_hints[ACCELERATOR_URN] == (
            b"type:nvidia-l4;count:1;install-nvidia-driver;machine_type:g2-standard-8")
    # Fetching from Earth Engine and writing do not ask for a GPU.
    assert any(name.startswith("FetchTiles") for name in envs)
    assert not any(ACCELERATOR_URN in env.resource_hints for name, env in envs.items()
                   if name.startswith(("FetchTiles", "WriteParquet", "PlanTiles")))
    # Every environment runs the custom worker image.
    assert {container_image(env) for env in job.proto_pipeline.components.environments.values()} == {IMAGE}

    environment = dataflow_environment(job)
    experiments = set(environment.experiments)
    assert "use_runner_v2" in experiments
    # One SDK process per vCPU; the model is shared across them (see docs/DEPLOY.md).
    assert "use_multiple_sdk_containers" in experiments and "no_use_multiple_sdk_containers" not in experiments
    assert not any("worker_accelerator" in option for option in environment.service_options)
    (pool,) = environment.worker_pools
    assert pool.machine_type == "n2-standard-4"
    assert pool.disk_size_gb == 100
    assert pool.autoscaling_settings.max_num_workers == 10
    assert environment.temp_storage_prefix.startswith("storage.googleapis.com/my-bucket/tmp/")


def test_worker_mode_attaches_the_gpu_to_every_worker(translate):
    job = translate(launcher_command(["--gpu-mode", "worker", "--single-sdk-process"]))
    envs = environments_by_transform(job)
    assert not any(ACCELERATOR_URN in env.resource_hints for env in envs.values())
    assert {container_image(env) for env in job.proto_pipeline.components.environments.values()} == {IMAGE}
    environment = dataflow_environment(job)
    assert "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" in list(environment.service_options)
    assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(environment.experiments)
    assert "use_multiple_sdk_containers" not in environment.experiments
    (pool,) = environment.worker_pools
    assert pool.machine_type == "g2-standard-8"


def test_a_checkpoint_baked_into_the_worker_image_is_left_to_the_workers(translate):
    """A local --checkpoint that exists only in the worker image passes the launcher on Dataflow (the
    workers load it) but not on DirectRunner, whose workers share the launcher's file system."""
    from pipeline import run as cli
    from tiles.errors import InputError

    baked = "/opt/dynamicvis/weights/dynamicvis_b.safetensors"
    assert not os.path.exists(baked)
    job = translate([*launcher_command([]), "--checkpoint", baked])
    assert job.options.get_all_options()["checkpoint"] == baked

    options, spec = cli.parse_and_validate([*PIPELINE, "--checkpoint", baked])
    with pytest.raises(InputError, match="--checkpoint"):
        cli.check_model(spec, options)


# ------------------------------------------------------------------ the whole graph, from CLI arguments

def _translate(argv):
    from pipeline.run import parse_and_validate, run

    options, spec = parse_and_validate(argv)
    return run(options, spec).job


@pytest.fixture
def translated(gcs_bucket):
    argv = ["--bbox", "8.0,47.0,8.05,47.05", "--start", "2024-06-01", "--end", "2024-07-01",
            "--output", f"{gcs_bucket}/emb", "--bigquery-table", "my-proj:ds.embeddings", "--gpu", "nvidia-l4",
            "--runner", "DataflowRunner", "--project", "my-proj", "--region", "us-central1",
            "--temp_location", f"{gcs_bucket}/tmp", "--dry_run=True"]
    return _translate(argv)


def test_gpu_hint_on_inference_only_reshuffle_bigquery_file_loads_and_all_writers(translated):
    components = translated.proto_pipeline.components
    hinted = {t.unique_name for t in components.transforms.values()
              if t.environment_id and ACCELERATOR_URN in components.environments[t.environment_id].resource_hints}
    assert hinted and all(name.startswith("Embed/") for name in hinted), sorted(hinted)
    env = next(components.environments[t.environment_id] for t in components.transforms.values()
               if t.unique_name in hinted)
    assert env.resource_hints[ACCELERATOR_URN] == b"type:nvidia-l4;count:1;install-nvidia-driver"

    names = {t.unique_name for t in translated.proto_pipeline.components.transforms.values()}
    for step in ("PlanTiles", "DropExisting", "FetchTiles", "Reshuffle", "Embed", "ToRows", "WriteParquet",
                 "WriteBigQuery", "WriteDeadLetters", "WriteManifest"):
        assert step in names, step
    assert any(name.startswith("WriteBigQuery/WriteToBigQuery/BigQueryBatchFileLoads") for name in names)
    assert not names & {"ExistingKeys", "ExistingBigQueryKeys", "NotInParquet", "NotInBigQuery"}  # no --skip-existing


def test_skip_existing_with_bigquery_joins_both_outputs_keys(gcs_bucket):
    """--skip-existing with --bigquery-table: keys from both outputs, a request skipped only when both have it,
    rows filtered per output; translated without contacting BigQuery (the table is looked up by the workers)."""
    job = _translate(["--bbox", "8.0,47.0,8.05,47.05", "--start", "2024-06-01", "--end", "2024-07-01",
                      "--output", f"{gcs_bucket}/emb", "--bigquery-table", "my-proj:ds.embeddings",
                      "--skip-existing", "--runner", "DataflowRunner", "--project", "my-proj",
                      "--region", "us-central1", "--temp_location", f"{gcs_bucket}/tmp", "--dry_run=True"])
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    for step in ("ExistingKeys", "ExistingBigQueryKeys", "InEverySink", "DropExisting", "NotInParquet",
                 "NotInBigQuery", "WriteParquet", "WriteBigQuery"):
        assert step in names, step
