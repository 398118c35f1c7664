"""The Airflow DAG in dags/: loads with DagBag, schedules monthly intervals, renders the pipeline options of a run.

Airflow lives in its own virtual environment (requirements-airflow.txt), not in the project's: these tests run
tests/dag_render.py with that interpreter, found as $AIRFLOW_PYTHON, else ./.venv-airflow/bin/python.
Without one they skip, unless REQUIRE_AIRFLOW=1 (CI sets it), where they fail.
"""
import json
import os
import pathlib
import shlex
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
AIRFLOW_PYTHON = os.environ.get("AIRFLOW_PYTHON") or str(ROOT / ".venv-airflow" / "bin" / "python")

pytestmark = pytest.mark.skipif(
    not os.access(AIRFLOW_PYTHON, os.X_OK) and os.environ.get("REQUIRE_AIRFLOW") != "1",
    reason=f"no Airflow interpreter at {AIRFLOW_PYTHON}: create it with "
           f"`python3 -m venv .venv-airflow && .venv-airflow/bin/pip install -r requirements-airflow.txt` "
           f"or set AIRFLOW_PYTHON")

SETTINGS = {"project": "my-proj", "temp_location": "gs://my-bucket/tmp",
            "image": "us-central1-docker.pkg.dev/my-proj/images/dynamicvis:0.1.0",
            "region_geojson": "gs://my-bucket/regions/europe.geojson", "output_root": "gs://my-bucket/emb/"}
SCENARIOS = [
    # 0: settings as DAG params; the run of March 2024 (scheduled after its interval ends, on April 1st)
    {"params": SETTINGS, "run_after": "2024-04-01"},
    # 1: settings as Airflow Variables, some non-defaults; December rolls over the year
    {"variables": {**SETTINGS, "region": "europe-west4", "max_workers": "4", "ee_project": "ee-billing",
                   "service_account": "dv@my-proj.iam.gserviceaccount.com",
                   "checkpoint": "gs://my-bucket/weights/b.safetensors"},
     "run_after": "2025-01-01"},
    # 2: a param beats its Variable
    {"variables": SETTINGS, "params": {"project": "other-proj"}, "run_after": "2024-04-01"},
    # 3: a required setting missing
    {"params": {k: v for k, v in SETTINGS.items() if k != "temp_location"}, "run_after": "2024-04-01"},
]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    assert os.access(AIRFLOW_PYTHON, os.X_OK), f"REQUIRE_AIRFLOW=1 but no Airflow interpreter at {AIRFLOW_PYTHON}"
    home = tmp_path_factory.mktemp("airflow_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
               AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT="google-cloud-platform://", DYNAMICVIS_PYTHON="python3")
    proc = subprocess.run([AIRFLOW_PYTHON, str(ROOT / "tests" / "dag_render.py"), str(ROOT / "dags"),
                           json.dumps(SCENARIOS), str(home / "out.json")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads((home / "out.json").read_text())


def options(command):
    out = {}
    for word in command:
        if word.startswith("--"):
            name, _, value = word.partition("=")
            out.setdefault(name, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


def test_dag_loads_without_errors(loaded):
    assert loaded["import_errors"] == {}
    assert loaded["dag_ids"] == ["dynamicvis_embeddings_monthly"]
    dag = loaded["dag"]
    assert dag["timetable"] == "CronDataIntervalTimetable"  # real [start, end) intervals, not trigger times
    assert dag["max_active_runs"] == 1
    assert {"project", "region", "temp_location", "image", "region_geojson", "output_root"} <= set(dag["params"])
    (task,) = dag["tasks"].values()
    assert "BeamRunPythonPipelineOperator" in task["class_mro"]
    assert task["runner"] == "DataflowRunner"
    assert task["retries"] >= 1
    assert task["py_options"] == ["-m"] and task["py_file"] == "pipeline"


def test_rendered_month_interval_output_and_idempotence_flags(loaded):
    render = loaded["renders"][0]
    assert render["interval"] == ["2024-03-01T00:00:00+00:00", "2024-04-01T00:00:00+00:00"]
    command = render["command"]
    assert command[:4] == ["python3", "-m", "pipeline", "--runner=DataflowRunner"]
    got = options(command)
    assert got["--start"] == "2024-03-01"
    assert got["--end"] == "2024-04-01"  # exclusive, like the pipeline's --end
    assert got["--output"] == "gs://my-bucket/emb/2024-03"  # one folder per interval
    assert got["--skip-existing"] == ""  # re-runs resume instead of duplicating
    assert got["--geojson"] == "gs://my-bucket/regions/europe.geojson"
    assert got["--project"] == "my-proj" and got["--region"] == "us-central1"
    assert got["--ee-project"] == "my-proj"
    assert got["--job_name"].startswith("dynamicvis-embed-2024-03-")
    assert "--checkpoint" not in got and "--service_account_email" not in got  # unset optional settings


def test_variables_defaults_and_year_rollover(loaded):
    render = loaded["renders"][1]
    got = options(render["command"])
    assert (got["--start"], got["--end"], got["--output"]) == ("2024-12-01", "2025-01-01", "gs://my-bucket/emb/2024-12")
    assert got["--region"] == "europe-west4" and got["--max_num_workers"] == "4"
    assert got["--ee-quota-concurrent"] == "40" and got["--ee-quota-rps"] == "100"  # the pipeline splits them
    assert "--ee-max-concurrency" not in got
    assert got["--ee-project"] == "ee-billing"
    assert got["--service_account_email"] == "dv@my-proj.iam.gserviceaccount.com"
    assert got["--checkpoint"] == "gs://my-bucket/weights/b.safetensors"


def test_param_beats_variable(loaded):
    assert options(loaded["renders"][2]["command"])["--project"] == "other-proj"


def test_missing_required_setting_names_it(loaded):
    error = loaded["renders"][3]["error"]
    assert "'temp_location' is not set" in error and "dynamicvis_temp_location" in error


def test_dataflow_options_match_run_dataflow_sh(loaded):
    """The DAG launches the job as ./run_dataflow.sh does (default --gpu-mode step) for the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAFLOW_")}
    env.update(DATAFLOW_JOB_NAME="x", PYTHON="python3")
    proc = subprocess.run(
        ["bash", str(ROOT / "run_dataflow.sh"), "--dry-run", "--project", SETTINGS["project"],
         "--region", "us-central1", "--temp-location", SETTINGS["temp_location"], "--image", SETTINGS["image"],
         "--", "--output", "gs://my-bucket/emb/2024-03"],
        capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    script = options(shlex.split(proc.stdout))
    dag = options(loaded["renders"][0]["command"])
    launcher_flags = {k for k in script if k not in ("--output", "--job_name")}
    assert launcher_flags == {"--runner", "--project", "--region", "--temp_location", "--staging_location",
                              "--experiments", "--max_num_workers", "--disk_size_gb", "--ee-project",
                              "--machine_type", "--gpu", "--sdk_container_image", "--sdk_location",
                              "--ee-quota-concurrent", "--ee-quota-rps"}
    assert {k: dag[k] for k in launcher_flags} == {k: script[k] for k in launcher_flags}
