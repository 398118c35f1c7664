# syntax=docker/dockerfile:1
# GPU worker image for Dataflow (Runner v2 custom container): CUDA PyTorch + Beam SDK boot + this project.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/dynamicvis:0.1.0 .
#   docker build --build-arg WEIGHTS=weights/dynamicvis_b.safetensors -t ...:0.1.0-b .   # weights baked in
#
# Versions are pinned and must agree with requirements.txt (tests/test_run_dataflow.py checks it):
# torch in the base image tag, Beam in the SDK image tag, Python 3.11 in both.

# CUDA build of torch 2.13.0 on Python 3.11. The build fails below if the base image's Python or torch differ.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
# The Beam SDK image whose worker boot we copy: same Beam version as requirements.txt, same Python as the base.
ARG BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.77.0

FROM ${BEAM_SDK_IMAGE} AS beam_sdk

FROM ${BASE_IMAGE}

# Optional: a converted backbone-only .safetensors file inside the build context (e.g. weights/NAME.safetensors),
# copied to /opt/dynamicvis/weights/ so workers need no download (pass that path as --checkpoint). Empty: workers
# fetch --checkpoint themselves.
ARG WEIGHTS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/dynamicvis/src

# Check the base before spending time on installs.
RUN python -c "import sys, torch; \
v = sys.version_info[:2]; assert v == (3, 11), f'base image has Python {v}, the Beam SDK image is 3.11'; \
assert torch.__version__.split('+')[0] == '2.13.0', f'base image has torch {torch.__version__}, need 2.13.0'"

# A C compiler for the fused CPU selective scan (models/scan_cpu.py builds it on first use, per CPU model):
# without one, inference on CPU-only workers falls back to the ~3x slower pure-PyTorch chunked scan.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first (cached layer): torch==2.13.0 is already satisfied by the base image (the +cuXXX local
# version matches the pin), so pip keeps the CUDA build. Then the project itself, without dependencies.
COPY requirements.txt ./
RUN python -m pip install -r requirements.txt \
    && python -m pip check
COPY setup.py ./
COPY pipeline ./pipeline
COPY transforms ./transforms
COPY models ./models
COPY earth_engine ./earth_engine
COPY tiles ./tiles
RUN python -m pip install --no-deps . \
    && python -c "import pipeline, transforms, models, earth_engine, tiles, apache_beam, torch, triton; \
assert apache_beam.__version__ == '2.77.0', apache_beam.__version__"
# triton comes with the CUDA torch wheel: it is the GPU scan (models/scan_triton.py) when mamba_ssm is
# absent (it needs nvcc to build); Triton compiles its launcher with the gcc installed above.

RUN --mount=type=bind,source=.,target=/tmp/context \
    mkdir -p /opt/dynamicvis/weights \
    && if [ -n "$WEIGHTS" ]; then \
         test -f "/tmp/context/$WEIGHTS" || { echo "WEIGHTS=$WEIGHTS is not a file in the build context" >&2; exit 1; }; \
         cp "/tmp/context/$WEIGHTS" /opt/dynamicvis/weights/; \
       fi

# The Beam worker boot program (Runner v2 starts it as the container's entrypoint).
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
