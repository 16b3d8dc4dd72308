#!/usr/bin/env bash
# `make image-test`: build the image with buildah on a local debootstrap base (no container registry
# is reachable here), run it as its non-root user on a read-only root filesystem with only /tmp
# writable, and check it from outside with tests/deploy/image_smoke.py (tritonclient, from .venv):
#   1. the demo models baked into the image: health, RepositoryIndex, a ModelInfer on every model,
#      then SIGTERM to the server, which must exit 0 within its grace period;
#   2. a repository built on the host and mounted read-only over /models, as users run it;
#   3. the CPU image holds tensorflow-cpu, not tensorflow; then (IMAGE_TEST_GPU=1, the default) the
#      GPU variant is built too, only built (no GPU here) and checked to import TensorFlow, and
#      the sizes of both images are reported. IMAGE_TEST_GPU=0 skips it (it downloads ~3 GB of
#      NVIDIA wheels and needs ~40 GB more of disk with the vfs driver for a few minutes).
# Needs root, buildah and debootstrap (installed with apt-get when missing), and about 11 GB of disk under
# /var/lib/containers while it runs (the vfs driver copies whole layers). Removes what it made but
# the base image, which later runs reuse.
set -euo pipefail

IMAGE=${IMAGE:-localhost/plexserve:image-test}
BASE_IMAGE=${BASE_IMAGE:-localhost/plexserve-base:bookworm}
BUILDAH=${BUILDAH:-buildah --storage-driver vfs}
PYTHON=${PYTHON:-.venv/bin/python}
WORK=${WORK:-build/image-test}
KEEP_IMAGE=${KEEP_IMAGE:-0}
IMAGE_TEST_GPU=${IMAGE_TEST_GPU:-1}
GPU_IMAGE=${GPU_IMAGE:-localhost/plexserve:image-test-gpu}
DEMO_MODELS=${DEMO_MODELS:-echo mlp multi_input inception residual shared_encoder multi_output text_classifier multi_task}
export BUILDAH

started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started )) s"; }
step() { echo "image-test [$(elapsed)]: $*"; }

deploy/image/ensure-tools.sh buildah debootstrap

rm -rf "$WORK"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

step "local base image $BASE_IMAGE"
WORKDIR=$WORK/base deploy/image/local-base.sh "$BASE_IMAGE"

step "buildah bud -> $IMAGE (log: $WORK/build.log)"
# The host's CA bundle goes in as the pip-ca build secret: where TLS to the package index is
# intercepted by a proxy, pip needs its CA; elsewhere it is the usual public roots. Never stored.
secret=()
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    secret=(--secret "id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt")
fi
# build VARIANT TAG LOG
build() {
    local build_started
    build_started=$(date +%s)
    if ! $BUILDAH bud --isolation chroot --pull=never --build-arg BASE_IMAGE="$BASE_IMAGE" \
            --build-arg VARIANT="$1" "${secret[@]}" -t "$2" . >"$3" 2>&1; then
        tail -n 40 "$3"
        echo "image-test: FAIL ($1 image build)"
        exit 1
    fi
    step "built $2 in $(( $(date +%s) - build_started )) s; size $($BUILDAH images --format '{{.Size}}' "$2")"
}
build cpu "$IMAGE" "$WORK/build.log"
cpu_size=$($BUILDAH images --format '{{.Size}}' "$IMAGE")

# The image's own command (ENTRYPOINT + CMD) and user, read from its config: what a runtime runs.
config=$($BUILDAH inspect --type image "$IMAGE")
mapfile -t command < <(echo "$config" | "$PYTHON" -c '
import json, sys
config = json.load(sys.stdin)["OCIv1"]["config"]
print("\n".join((config.get("Entrypoint") or []) + (config.get("Cmd") or [])))')
user=$(echo "$config" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["OCIv1"]["config"]["User"])')
[ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] && [ -n "$user" ] \
    || { echo "image-test: FAIL (image user is '$user', not a non-root UID)"; exit 1; }
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

container=""
mountpoint=""
server=""
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then kill -KILL "$server" || true; fi
    if [ -n "$mountpoint" ]; then
        umount "$mountpoint/run" 2>/dev/null || true
        umount "$mountpoint" 2>/dev/null || true
    fi
    if [ -n "$container" ]; then $BUILDAH rm "$container" >/dev/null 2>&1 || true; fi
    if [ "$KEEP_IMAGE" != 1 ]; then $BUILDAH rmi "$IMAGE" "$GPU_IMAGE" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# The deepest process under `buildah run` is the server (buildah's own helpers sit between). A
# SIGTERM to buildah itself would make it kill the server, so the test signals the server.
server_pid() {
    local pid=$1 child
    while child=$(ps -o pid= --ppid "$pid" | head -n 1 | tr -d ' ') && [ -n "$child" ]; do
        pid=$child
    done
    echo "$pid"
}

# run_server NAME EXTRA_BUILDAH_RUN_ARGS... : starts the image's command in a fresh container whose
# root filesystem is bind-mounted read-only (Kubernetes' readOnlyRootFilesystem), with a fresh
# host folder on /tmp (the emptyDir), on the host network.
run_server() {
    local name=$1
    shift
    container=$($BUILDAH from --pull=never --name "plexserve-image-test-$name-$$" "$IMAGE")
    mountpoint=$($BUILDAH mount "$container")
    mkdir -p "$WORK/$name/tmp" "$WORK/$name/run"
    chmod 1777 "$WORK/$name/tmp"
    mount --bind "$mountpoint" "$mountpoint"
    mount -o remount,bind,ro "$mountpoint"
    # buildah itself writes /run/.containerenv into the root; a root-owned 0755 folder (not
    # writable by the image's user) takes it.
    mount --bind "$WORK/$name/run" "$mountpoint/run"
    grpc_port=$(free_port)
    http_port=$(free_port)
    local args=("${command[@]}" --grpc-port "$grpc_port")
    # --http-port (HTTP health and /metrics) is checked only by a server that has it.
    if $BUILDAH run --isolation chroot --user "$user" "$container" -- plexserve serve --help \
            2>/dev/null | grep -q -- --http-port; then
        args+=(--http-port "$http_port")
        http=(--http "127.0.0.1:$http_port")
    else
        http=()
    fi
    step "$name: ${args[*]} (user $user, read-only root, log: $WORK/$name/server.log)"
    $BUILDAH run --isolation chroot --network host --user "$user" -v "$WORK/$name/tmp:/tmp" \
        "$@" "$container" -- "${args[@]}" >"$WORK/$name/server.log" 2>&1 &
    runner=$!
}

stop_server() {
    local name=$1 grace=$2
    server=$(server_pid "$runner")
    step "$name: SIGTERM to the server (pid $server)"
    local signalled
    signalled=$(date +%s)
    kill -TERM "$server"
    local status=0
    # buildah run exits with the server's status; the bound is the grace period plus slack.
    if timeout "$(( grace + 15 ))" tail --pid="$runner" -f /dev/null; then
        wait "$runner" || status=$?
    else
        echo "image-test: FAIL ($name: still running $(( grace + 15 )) s after SIGTERM)"
        exit 1
    fi
    server=""
    [ "$status" = 0 ] || { tail -n 20 "$WORK/$name/server.log"; echo "image-test: FAIL ($name: exit status $status after SIGTERM)"; exit 1; }
    step "$name: exited 0, $(( $(date +%s) - signalled )) s after SIGTERM"
    umount "$mountpoint/run"
    umount "$mountpoint"
    mountpoint=""
    $BUILDAH rm "$container" >/dev/null
    container=""
}

smoke() {
    local name=$1
    shift
    if ! "$PYTHON" tests/deploy/image_smoke.py --grpc "127.0.0.1:$grpc_port" "${http[@]}" \
            --watch-pid "$runner" "$@"; then
        tail -n 30 "$WORK/$name/server.log"
        echo "image-test: FAIL ($name)"
        exit 1
    fi
}

# 1. The demo models built into the image.
read -ra demo_models <<<"$DEMO_MODELS"
run_server baked
smoke baked --expect-models "${demo_models[@]}"
stop_server baked 25

# 2. A repository from the host, mounted read-only over /models.
step "mounted: building mlp as 'mounted_mlp' on the host"
"$(dirname "$PYTHON")/plexserve" build mlp --name mounted_mlp --repo "$WORK/mounted/repository" \
    >"$WORK/mounted-build.log" 2>&1 || { cat "$WORK/mounted-build.log"; exit 1; }
chmod -R a+rX "$WORK/mounted/repository"
run_server mounted -v "$WORK/mounted/repository:/models:ro"
smoke mounted --expect-models mounted_mlp
stop_server mounted 25

# What the server left in /tmp (the emptyDir): it must need nothing else writable.
step "files the server wrote (all under /tmp): $(cd "$WORK/baked/tmp" && find . -mindepth 1 | head -n 5 | tr '\n' ' ')"

# in_image IMAGE OUTPUT_FILE COMMAND...: runs a command in a throwaway container of IMAGE, as its
# user, its output in OUTPUT_FILE (not in a $(...) subshell, where a failure would not stop us).
in_image() {
    local image=$1 output=$2
    shift 2
    container=$($BUILDAH from --pull=never "$image")
    if ! $BUILDAH run --isolation chroot --user "$user" "$container" -- "$@" >"$output" 2>"$output.err"; then
        cat "$output.err"
        echo "image-test: FAIL (in $image: $*)"
        exit 1
    fi
    $BUILDAH rm "$container" >/dev/null
    container=""
}

# 3. TensorFlow's wheel in each variant, and the images' sizes.
# pip spells the project tensorflow_cpu or tensorflow-cpu depending on its version.
in_image "$IMAGE" "$WORK/cpu-packages.txt" pip list --format=freeze
if ! grep -Eq '^tensorflow[-_]cpu==' "$WORK/cpu-packages.txt" || grep -q '^tensorflow==' "$WORK/cpu-packages.txt"; then
    grep -i tensorflow "$WORK/cpu-packages.txt"
    echo "image-test: FAIL (the CPU image must hold tensorflow-cpu, not tensorflow)"
    exit 1
fi
step "cpu: $(grep -Ei '^tensorflow' "$WORK/cpu-packages.txt" | tr '\n' ' ')"
gpu_size="not built (IMAGE_TEST_GPU=0)"
if [ "$IMAGE_TEST_GPU" = 1 ]; then
    # The vfs driver copies every layer: free the CPU image's space first.
    if [ "$KEEP_IMAGE" != 1 ]; then $BUILDAH rmi "$IMAGE" >/dev/null; fi
    step "buildah bud VARIANT=gpu -> $GPU_IMAGE (log: $WORK/build-gpu.log; built only: no GPU here)"
    build gpu "$GPU_IMAGE" "$WORK/build-gpu.log"
    gpu_size=$($BUILDAH images --format '{{.Size}}' "$GPU_IMAGE")
    in_image "$GPU_IMAGE" "$WORK/gpu-import.txt" python3 -c \
        'import tensorflow as tf; print("tensorflow", tf.__version__, "imports; GPUs visible here:", len(tf.config.list_physical_devices("GPU")))'
    step "gpu: $(tail -n 1 "$WORK/gpu-import.txt")"
fi
step "image sizes: cpu $cpu_size, gpu $gpu_size"
echo "image-test: PASS in $(elapsed)"
