#!/usr/bin/env bash
# Launch the DynamicVis embedding pipeline (`python -m pipeline`) on Google Cloud Dataflow (Runner v2) with GPU
# workers.
#
#   ./run_dataflow.sh [LAUNCHER OPTIONS] -- [PIPELINE OPTIONS]
#
# Launcher options (before `--`) choose where and on what the job runs; each has an environment variable, and
# a flag beats its variable. Pipeline options (after `--`) go to `python -m pipeline` unchanged (regions, dates,
# --output gs://..., --checkpoint, batch sizes, its own --dry-run plan, ...). See docs/DEPLOY.md.
#
# Every setting is checked before anything is launched; problems are listed together and the script exits 2.
# `--dry-run` prints the exact command instead of running it.
set -euo pipefail

PROG=$(basename "$0")
HERE=$(cd "$(dirname "$0")" && pwd)

usage() {
  cat <<EOF
Usage: $PROG [LAUNCHER OPTIONS] -- PIPELINE OPTIONS

Launcher options (flag | environment variable | default):
  --project ID            DATAFLOW_PROJECT            (required) Cloud project that runs the job
  --region REGION         DATAFLOW_REGION             (required) Dataflow region, e.g. us-central1
  --temp-location GS      DATAFLOW_TEMP_LOCATION      (required) gs://BUCKET/PATH for temporary files
  --staging-location GS   DATAFLOW_STAGING_LOCATION   TEMP_LOCATION/staging; gs://BUCKET/PATH for staged files
  --image IMAGE           DATAFLOW_IMAGE              (required) worker image built from ./Dockerfile,
                                                      REGISTRY/PATH:TAG or @sha256:...; 'none' = Beam's default
                                                      image plus --setup_file (slow worker start-up)
  --accelerator TYPE      DATAFLOW_ACCELERATOR        nvidia-l4; GPU type, one per GPU worker, driver installed
  --gpu-machine-type MT   DATAFLOW_GPU_MACHINE_TYPE   g2-standard-8; machine type of GPU workers
  --machine-type MT       DATAFLOW_MACHINE_TYPE       n2-standard-4; machine type of the CPU workers
                                                      (--gpu-mode step only)
  --gpu-mode MODE         DATAFLOW_GPU_MODE           step; 'step': only the inference step runs on GPU
                                                      workers (accelerator resource hint, right fitting);
                                                      'worker': every worker has the GPU (worker_accelerator)
  --max-workers N         DATAFLOW_MAX_WORKERS        10; autoscaling ceiling (bounded by GPU quota)
  --num-workers N         DATAFLOW_NUM_WORKERS        (Dataflow's default); initial workers
  --disk-size-gb N        DATAFLOW_DISK_SIZE_GB       100; worker boot disk, >= 50 (the CUDA image is large)
  --service-account SA    DATAFLOW_SERVICE_ACCOUNT    (project default); worker service account email
  --subnetwork SUBNET     DATAFLOW_SUBNETWORK         (default network); regions/R/subnetworks/S or full URL
  --no-public-ips         DATAFLOW_NO_PUBLIC_IPS=1    workers without external IPs (needs Private Google Access)
  --single-sdk-process    DATAFLOW_SINGLE_SDK_PROCESS=1  one SDK process per worker
                                                      (experiment no_use_multiple_sdk_containers)
  --ee-project ID         EE_PROJECT                  PROJECT; Earth Engine project billed for requests
  --ee-quota-concurrent N EE_QUOTA_CONCURRENT         40; the EE project's concurrent-request quota
  --ee-quota-rps R        EE_QUOTA_RPS                100; the EE project's requests/s quota
                                                      (passed on: the pipeline splits both over the fetching
                                                      SDK processes, see its --dry-run --json)
  --job-name NAME         DATAFLOW_JOB_NAME           dynamicvis-embed-UTCSTAMP
  --python PATH           PYTHON                      python3; interpreter with the project installed
  --dry-run                                           print the exact command, launch nothing
  -h, --help

Example:
  $PROG --project my-proj --region us-central1 --temp-location gs://my-bucket/tmp \\
      --image us-central1-docker.pkg.dev/my-proj/images/dynamicvis:0.1.0 -- \\
      --bbox 5.8,47.2,15.1,55.1 --year 2024 --windows quarterly --output gs://my-bucket/embeddings/de-2024 \\
      --skip-existing
EOF
}

# ---- settings: environment first, flags override ---------------------------------------------------------
PROJECT=${DATAFLOW_PROJECT:-}
REGION=${DATAFLOW_REGION:-}
TEMP_LOCATION=${DATAFLOW_TEMP_LOCATION:-}
STAGING_LOCATION=${DATAFLOW_STAGING_LOCATION:-}
IMAGE=${DATAFLOW_IMAGE:-}
ACCELERATOR=${DATAFLOW_ACCELERATOR:-nvidia-l4}
GPU_MACHINE_TYPE=${DATAFLOW_GPU_MACHINE_TYPE:-g2-standard-8}
MACHINE_TYPE=${DATAFLOW_MACHINE_TYPE:-n2-standard-4}
GPU_MODE=${DATAFLOW_GPU_MODE:-step}
MAX_WORKERS=${DATAFLOW_MAX_WORKERS:-10}
NUM_WORKERS=${DATAFLOW_NUM_WORKERS:-}
DISK_SIZE_GB=${DATAFLOW_DISK_SIZE_GB:-100}
SERVICE_ACCOUNT=${DATAFLOW_SERVICE_ACCOUNT:-}
SUBNETWORK=${DATAFLOW_SUBNETWORK:-}
NO_PUBLIC_IPS=${DATAFLOW_NO_PUBLIC_IPS:-0}
SINGLE_SDK_PROCESS=${DATAFLOW_SINGLE_SDK_PROCESS:-0}
EE_PROJECT=${EE_PROJECT:-}
EE_QUOTA_CONCURRENT=${EE_QUOTA_CONCURRENT:-40}
EE_QUOTA_RPS=${EE_QUOTA_RPS:-100}
JOB_NAME=${DATAFLOW_JOB_NAME:-}
PYTHON=${PYTHON:-python3}
DRY_RUN=0

ERRORS=()
err() { ERRORS+=("$*"); }

need_value() {  # FLAG REMAINING_ARG_COUNT
  if [[ $2 -lt 2 ]]; then
    echo "$PROG: error: $1 needs a value (see --help)" >&2
    exit 2
  fi
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --project) need_value "$1" $#; PROJECT=$2; shift 2 ;;
    --region) need_value "$1" $#; REGION=$2; shift 2 ;;
    --temp-location) need_value "$1" $#; TEMP_LOCATION=$2; shift 2 ;;
    --staging-location) need_value "$1" $#; STAGING_LOCATION=$2; shift 2 ;;
    --image) need_value "$1" $#; IMAGE=$2; shift 2 ;;
    --accelerator) need_value "$1" $#; ACCELERATOR=$2; shift 2 ;;
    --gpu-machine-type) need_value "$1" $#; GPU_MACHINE_TYPE=$2; shift 2 ;;
    --machine-type) need_value "$1" $#; MACHINE_TYPE=$2; shift 2 ;;
    --gpu-mode) need_value "$1" $#; GPU_MODE=$2; shift 2 ;;
    --max-workers) need_value "$1" $#; MAX_WORKERS=$2; shift 2 ;;
    --num-workers) need_value "$1" $#; NUM_WORKERS=$2; shift 2 ;;
    --disk-size-gb) need_value "$1" $#; DISK_SIZE_GB=$2; shift 2 ;;
    --service-account) need_value "$1" $#; SERVICE_ACCOUNT=$2; shift 2 ;;
    --subnetwork) need_value "$1" $#; SUBNETWORK=$2; shift 2 ;;
    --no-public-ips) NO_PUBLIC_IPS=1; shift ;;
    --single-sdk-process) SINGLE_SDK_PROCESS=1; shift ;;
    --ee-project) need_value "$1" $#; EE_PROJECT=$2; shift 2 ;;
    --ee-quota-concurrent) need_value "$1" $#; EE_QUOTA_CONCURRENT=$2; shift 2 ;;
    --ee-quota-rps) need_value "$1" $#; EE_QUOTA_RPS=$2; shift 2 ;;
    --job-name) need_value "$1" $#; JOB_NAME=$2; shift 2 ;;
    --python) need_value "$1" $#; PYTHON=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *)
      echo "$PROG: error: unknown launcher option '$1'; pipeline options go after '--' (see --help)" >&2
      exit 2 ;;
  esac
done
PIPELINE_ARGS=("$@")

# ---- checks ------------------------------------------------------------------------------------------------
GS_RE='^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$'

if [[ -z $PROJECT ]]; then
  err "missing project: pass --project or set DATAFLOW_PROJECT"
elif [[ ! $PROJECT =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]]; then
  err "project '$PROJECT' is not a Cloud project ID (6-30 lowercase letters, digits, hyphens)"
fi

if [[ -z $REGION ]]; then
  err "missing region: pass --region or set DATAFLOW_REGION (e.g. us-central1; pick one with L4 quota)"
elif [[ ! $REGION =~ ^[a-z]+-[a-z]+[0-9]+$ ]]; then
  err "region '$REGION' is not a Dataflow region name like us-central1 (a zone like us-central1-a is not a region)"
fi

if [[ -z $TEMP_LOCATION ]]; then
  err "missing temp bucket: pass --temp-location gs://BUCKET/PATH or set DATAFLOW_TEMP_LOCATION"
elif [[ ! $TEMP_LOCATION =~ $GS_RE ]]; then
  err "temp location '$TEMP_LOCATION' must be a gs://BUCKET/PATH URI"
fi
if [[ -z $STAGING_LOCATION && $TEMP_LOCATION =~ $GS_RE ]]; then
  STAGING_LOCATION=${TEMP_LOCATION%/}/staging
fi
if [[ -n $STAGING_LOCATION && ! $STAGING_LOCATION =~ $GS_RE ]]; then
  err "staging location '$STAGING_LOCATION' must be a gs://BUCKET/PATH URI"
fi

if [[ -z $IMAGE ]]; then
  err "missing worker image: pass --image REGISTRY/PATH:TAG (built from ./Dockerfile) or set DATAFLOW_IMAGE;" \
      "'none' uses Beam's default image and installs the project with --setup_file"
elif [[ $IMAGE != none && ! $IMAGE =~ ^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})$ ]]; then
  err "image '$IMAGE' must be REGISTRY/PATH:TAG or REGISTRY/PATH@sha256:DIGEST (a pinned tag, lowercase path)"
fi

# GPU type -> the machine types that carry exactly one such GPU (one model per worker: see docs/DEPLOY.md).
case $ACCELERATOR in
  nvidia-l4) GPU_MT_RE='^g2-standard-(4|8|12|16|32)$'; GPU_MT_HINT='g2-standard-{4,8,12,16,32}' ;;
  nvidia-tesla-t4|nvidia-tesla-v100|nvidia-tesla-p100|nvidia-tesla-p4)
    GPU_MT_RE='^n1-(standard|highmem|highcpu)-[0-9]+$|^n1-custom-[0-9]+-[0-9]+$'; GPU_MT_HINT='n1-*' ;;
  nvidia-tesla-a100) GPU_MT_RE='^a2-highgpu-1g$'; GPU_MT_HINT='a2-highgpu-1g' ;;
  nvidia-a100-80gb) GPU_MT_RE='^a2-ultragpu-1g$'; GPU_MT_HINT='a2-ultragpu-1g' ;;
  nvidia-h100-80gb) GPU_MT_RE='^a3-highgpu-1g$'; GPU_MT_HINT='a3-highgpu-1g' ;;
  *)
    GPU_MT_RE=''
    err "accelerator '$ACCELERATOR' is not one of nvidia-l4, nvidia-tesla-t4, nvidia-tesla-v100," \
        "nvidia-tesla-p100, nvidia-tesla-p4, nvidia-tesla-a100, nvidia-a100-80gb, nvidia-h100-80gb" \
        "(give the type only: one GPU per worker, driver installed)" ;;
esac
if [[ -n $GPU_MT_RE && ! $GPU_MACHINE_TYPE =~ $GPU_MT_RE ]]; then
  err "GPU machine type '$GPU_MACHINE_TYPE' does not carry one $ACCELERATOR; use $GPU_MT_HINT"
fi

case $GPU_MODE in
  step)
    if [[ ! $MACHINE_TYPE =~ ^(e2|n1|n2|n2d|n4|c2|c2d|c3|c3d|c4|t2d|m1|m3)-[a-z]+-[0-9]+$|^(n1|n2|n2d|e2)-custom-[0-9]+-[0-9]+$ ]]; then
      err "machine type '$MACHINE_TYPE' for the CPU steps must be a CPU machine type such as n2-standard-4" \
          "(GPU machine types go in --gpu-machine-type)"
    fi ;;
  worker) ;;
  *) err "GPU mode '$GPU_MODE' must be 'step' (GPU only for inference) or 'worker' (GPU on every worker)" ;;
esac

if [[ ! $MAX_WORKERS =~ ^[1-9][0-9]*$ ]]; then
  err "max workers '$MAX_WORKERS' must be a positive integer"
fi
if [[ -n $NUM_WORKERS ]]; then
  if [[ ! $NUM_WORKERS =~ ^[1-9][0-9]*$ ]]; then
    err "num workers '$NUM_WORKERS' must be a positive integer"
  elif [[ $MAX_WORKERS =~ ^[1-9][0-9]*$ && $NUM_WORKERS -gt $MAX_WORKERS ]]; then
    err "num workers ($NUM_WORKERS) exceeds max workers ($MAX_WORKERS)"
  fi
fi
if [[ ! $DISK_SIZE_GB =~ ^[1-9][0-9]*$ ]] || [[ $DISK_SIZE_GB -lt 50 ]]; then
  err "disk size '$DISK_SIZE_GB' must be an integer >= 50 (GB): the CUDA worker image alone is ~10 GB"
fi
if [[ -n $SERVICE_ACCOUNT && ! $SERVICE_ACCOUNT =~ ^[a-z][a-z0-9-]*@[a-z0-9.-]+\.iam\.gserviceaccount\.com$ ]]; then
  err "service account '$SERVICE_ACCOUNT' must be an email like NAME@PROJECT.iam.gserviceaccount.com"
fi
for flag_var in NO_PUBLIC_IPS SINGLE_SDK_PROCESS; do
  if [[ ! ${!flag_var} =~ ^[01]$ ]]; then
    err "DATAFLOW_$flag_var must be 0 or 1, got '${!flag_var}'"
  fi
done
EE_PROJECT=${EE_PROJECT:-$PROJECT}
if [[ -n $EE_PROJECT && ! $EE_PROJECT =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]]; then
  err "Earth Engine project '$EE_PROJECT' is not a Cloud project ID"
fi
if [[ ! $EE_QUOTA_CONCURRENT =~ ^[1-9][0-9]*$ ]]; then
  err "EE concurrent-request quota '$EE_QUOTA_CONCURRENT' must be a positive integer"
fi
if [[ ! $EE_QUOTA_RPS =~ ^[1-9][0-9]*$ ]]; then
  err "EE requests/s quota '$EE_QUOTA_RPS' must be a positive integer"
fi
JOB_NAME=${JOB_NAME:-dynamicvis-embed-$(date -u +%Y%m%d-%H%M%S)}
if [[ ! $JOB_NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; then
  err "job name '$JOB_NAME' must be lowercase letters, digits and hyphens, starting with a letter (<= 63)"
fi

# Pipeline options: --output must be on GCS; what the launcher sets must not be given twice.
OUTPUT=''
expect_output=0
for arg in "${PIPELINE_ARGS[@]}"; do
  if [[ $expect_output == 1 ]]; then OUTPUT=$arg; expect_output=0; continue; fi
  case $arg in
    --output) expect_output=1 ;;
    --output=*) OUTPUT=${arg#--output=} ;;
    --runner|--runner=*|--project|--project=*|--region|--region=*|--temp_location*|--staging_location*|\
    --sdk_container_image*|--sdk_location*|--machine_type*|--worker_machine_type*|--max_num_workers*|\
    --num_workers*|--disk_size_gb*|--service_account_email*|--subnetwork*|--dataflow_service_options*|\
    --setup_file*|--job_name*|--gpu|--gpu=*|--ee-project*|--ee_project*|--ee-quota-*|--ee_quota_*)
      err "pipeline option '${arg%%=*}' is set by the launcher; use the launcher option instead (see --help)" ;;
  esac
done
if [[ -z $OUTPUT ]]; then
  err "missing pipeline option --output gs://BUCKET/PATH after '--' (Dataflow workers write there)"
elif [[ ! $OUTPUT =~ $GS_RE ]]; then
  err "pipeline --output '$OUTPUT' must be a gs://BUCKET/PATH URI: Dataflow workers cannot write local paths"
fi

if [[ ${#ERRORS[@]} -gt 0 ]]; then
  echo "$PROG: cannot launch:" >&2
  printf '  - %s\n' "${ERRORS[@]}" >&2
  echo "See $PROG --help and docs/DEPLOY.md." >&2
  exit 2
fi

# ---- the command ---------------------------------------------------------------------------------------------
GPU_SPEC="type:${ACCELERATOR};count:1;install-nvidia-driver"
CMD=("$PYTHON" -m pipeline
  --runner=DataflowRunner
  "--project=$PROJECT"
  "--region=$REGION"
  "--temp_location=$TEMP_LOCATION"
  "--staging_location=$STAGING_LOCATION"
  "--job_name=$JOB_NAME"
  --experiments=use_runner_v2
  "--max_num_workers=$MAX_WORKERS"
  "--disk_size_gb=$DISK_SIZE_GB"
  "--ee-project=$EE_PROJECT"
  "--ee-quota-concurrent=$EE_QUOTA_CONCURRENT"
  "--ee-quota-rps=$EE_QUOTA_RPS"
)
if [[ $GPU_MODE == step ]]; then
  # Right fitting: GPU workers only for the step carrying the hint; the rest runs on CPU workers.
  CMD+=("--machine_type=$MACHINE_TYPE" "--gpu=${GPU_SPEC};machine_type:${GPU_MACHINE_TYPE}")
else
  CMD+=("--machine_type=$GPU_MACHINE_TYPE" "--dataflow_service_options=worker_accelerator=${GPU_SPEC}")
fi
if [[ $IMAGE == none ]]; then
  CMD+=("--setup_file=$HERE/setup.py")
else
  CMD+=("--sdk_container_image=$IMAGE" --sdk_location=container)
fi
[[ -n $NUM_WORKERS ]] && CMD+=("--num_workers=$NUM_WORKERS")
[[ -n $SERVICE_ACCOUNT ]] && CMD+=("--service_account_email=$SERVICE_ACCOUNT")
[[ -n $SUBNETWORK ]] && CMD+=("--subnetwork=$SUBNETWORK")
[[ $NO_PUBLIC_IPS == 1 ]] && CMD+=(--no_use_public_ips)
[[ $SINGLE_SDK_PROCESS == 1 ]] && CMD+=(--experiments=no_use_multiple_sdk_containers)
CMD+=("${PIPELINE_ARGS[@]}")

if [[ $DRY_RUN == 1 ]]; then
  printf '%q ' "${CMD[@]}"
  printf '\n'
  exit 0
fi
cd "$HERE"
exec "${CMD[@]}"
