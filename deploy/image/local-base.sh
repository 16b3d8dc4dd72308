#!/usr/bin/env bash
# Makes a local stand-in for python:3.11-slim when no container registry is reachable:
# Debian bookworm (minbase) with python3 (3.11), venv and CA certificates, committed into buildah's
# storage as $BASE_IMAGE. Skips the work when that image is already there.
#
# Usage: deploy/image/local-base.sh [IMAGE]   (default localhost/plexserve-base:bookworm)
# Env:   BUILDAH (the buildah command, with its storage flags), WORKDIR (scratch folder),
#        DEBIAN_MIRROR (optional; debootstrap's default mirror otherwise)
set -euo pipefail

BASE_IMAGE=${1:-localhost/plexserve-base:bookworm}
BUILDAH=${BUILDAH:-buildah --storage-driver vfs}
WORKDIR=${WORKDIR:-build/image-base}

if $BUILDAH inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "local base $BASE_IMAGE: already built"
    exit 0
fi

rootfs=$WORKDIR/rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs"
echo "local base: debootstrap bookworm into $rootfs"
# python3-venv brings ensurepip, which the Dockerfile's `python3 -m venv` needs (as in python:*-slim).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >"$WORKDIR/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORKDIR/debootstrap.log"; exit 1; }
# What an image does not carry: package caches, and device nodes (the runtime provides /dev).
rm -rf "${rootfs:?}"/var/cache/apt/archives/*.deb "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/dev/*

container=$($BUILDAH from scratch)
trap '$BUILDAH rm "$container" >/dev/null 2>&1 || true' EXIT
$BUILDAH copy --quiet "$container" "$rootfs" / >/dev/null
$BUILDAH config --env LANG=C.UTF-8 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd python3 "$container"
$BUILDAH commit --quiet "$container" "$BASE_IMAGE" >/dev/null
rm -rf "$rootfs"
echo "local base $BASE_IMAGE: built"
