# plexserve image: the server, its pinned dependencies, and the demo models in /models.
#
#   docker build -t plexserve:cpu .                                  # CPU (default)
#   docker build --build-arg VARIANT=gpu -t plexserve:gpu .          # + TensorFlow's CUDA libraries
#   docker run --rm -p 8500:8500 -p 8501:8501 plexserve:cpu          # serves the demo models
#   docker run --rm -p 8500:8500 -v "$PWD/model_repository:/models:ro" plexserve:cpu   # your models
#
# BASE_IMAGE must be Debian-like with python3 (3.11) and its venv module: python:3.11-slim, or the
# local debootstrap base that `make image-test` builds when no registry is reachable. Both stages
# use the same base, so the virtualenv's interpreter path is the same in both.
# Behind a TLS-inspecting proxy, pass its CA bundle as the build secret `pip-ca`
# (`--secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt`); it is used by pip only and never
# stored in the image.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
# cpu: `tensorflow-cpu` instead of `tensorflow`: the same version and module, the same speed on a
# CPU, half the wheel (no CUDA kernels). gpu: `tensorflow[and-cuda]` (plus the NVIDIA CUDA/cuDNN
# wheels). Both at the versions requirements.lock pins, with deploy/image/constraints.txt for what
# the lock does not hold (tensorflow-cpu, the NVIDIA wheels).
ARG VARIANT=cpu
ARG DEMO_MODELS="echo mlp multi_input inception residual shared_encoder multi_output text_classifier multi_task"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2
SHELL ["/bin/sh", "-eu", "-c"]
WORKDIR /src

# Dependencies first (their layer survives source changes): the project's runtime dependencies as
# pyproject.toml lists them, at the versions requirements.lock pins, but `tensorflow`, which the
# variant replaces. No test or lint tools. `import tensorflow` is the same with either wheel.
COPY pyproject.toml requirements.lock deploy/image/constraints.txt ./
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    case "$VARIANT" in \
        cpu) tensorflow="tensorflow-cpu" ;; \
        gpu) tensorflow="tensorflow[and-cuda]" ;; \
        *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 2 ;; \
    esac; \
    python3 -m venv /opt/plexserve; \
    python3 -c 'import re, tomllib; dependencies = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d for d in dependencies if re.split(r"[^A-Za-z0-9._-]", d)[0] != "tensorflow"))' > /tmp/dependencies.txt; \
    /opt/plexserve/bin/pip install --quiet -c requirements.lock -c constraints.txt \
        -r /tmp/dependencies.txt "$tensorflow"

COPY README.md LICENSE ./
COPY models ./models
COPY service ./service
# The server runs as another user than the build: the repository is made world-readable
# whatever the build's umask.
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    /opt/plexserve/bin/pip install --quiet --no-deps .; \
    /opt/plexserve/bin/plexserve build $DEMO_MODELS --repo /models; \
    chmod -R a+rX /models

FROM ${BASE_IMAGE}
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="plexserve" \
      org.opencontainers.image.description="Keras SavedModels over gRPC (Open Inference Protocol v2)" \
      io.plexserve.variant="${VARIANT}"
# A fixed UID/GID (10001), so Kubernetes' runAsNonRoot can verify it and volumes can be owned by it.
RUN groupadd --gid 10001 plexserve \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin plexserve
COPY --from=builder /opt/plexserve /opt/plexserve
COPY --from=builder /models /models
# Read-only root filesystem: the only writable place is /tmp (an emptyDir or tmpfs in production).
# HOME, Keras' config folder and CUDA's kernel cache point there; bytecode is never written.
ENV PATH=/opt/plexserve/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    KERAS_HOME=/tmp/.keras \
    CUDA_CACHE_PATH=/tmp/.nv/ComputeCache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PLEXSERVE_MODEL_REPOSITORY=/models
USER 10001:10001
WORKDIR /tmp
# 8500 gRPC (OIP v2, grpc.health.v1, reflection); 8501 HTTP (/metrics, /v2/health/*).
EXPOSE 8500 8501
# Exec form: plexserve is PID 1 and receives SIGTERM itself (graceful shutdown, --grace-period).
# `serve` takes its repository from PLEXSERVE_MODEL_REPOSITORY (/models above), so a repository is
# used instead of the demo models by mounting it on /models, or elsewhere with the variable set.
ENTRYPOINT ["plexserve"]
CMD ["serve"]
