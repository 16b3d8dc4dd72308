#!/usr/bin/env bash
# `make image`: builds the image with docker when an engine answers (`docker info`), else with
# buildah (installed with apt-get when missing and running as root).
# Env: VARIANT (cpu|gpu), IMAGE (the tag), BASE_IMAGE (optional), BUILDAH (the buildah command,
# with storage flags if any), BUILDAH_ISOLATION (default chroot), PIP_CA (a CA bundle for pip
# behind a TLS-inspecting proxy; optional).
set -euo pipefail

VARIANT=${VARIANT:-cpu}
IMAGE=${IMAGE:-plexserve:$VARIANT}
BUILDAH=${BUILDAH:-buildah}

args=(--build-arg "VARIANT=$VARIANT" -t "$IMAGE")
if [ -n "${BASE_IMAGE:-}" ]; then args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE"); fi
if [ -n "${PIP_CA:-}" ]; then args+=(--secret "id=pip-ca,src=$PIP_CA"); fi

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo "make image: docker build ${args[*]} ."
    DOCKER_BUILDKIT=1 docker build "${args[@]}" .
else
    echo "make image: no Docker engine answers; building with buildah"
    "$(dirname "$0")/ensure-tools.sh" buildah
    # chroot isolation needs no OCI runtime or cgroup set-up, so RUN steps work inside containers
    # and CI sandboxes too (where crun fails); BUILDAH_ISOLATION=oci restores buildah's default.
    export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
    echo "make image: $BUILDAH bud ${args[*]} ."
    $BUILDAH bud "${args[@]}" .
fi
echo "make image: built $IMAGE"
