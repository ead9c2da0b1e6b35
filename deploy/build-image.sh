#!/usr/bin/env bash
# Builds the container image from the Dockerfile with the first working
# builder: docker (only if its engine answers: a docker client without an
# engine does not count), podman, or buildah. Without one it prints a
# "skipped:" line and exits 0, so CI on a machine without a builder says so
# instead of failing. After a build it runs `proxyd --version` in the image
# and prints the image size.
#
#   deploy/build-image.sh [TAG] [POLICY]      (default proxyd:dev, default)
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-proxyd:dev}
policy=${2:-default}

works() { command -v "$1" >/dev/null 2>&1 && timeout 30 "$@" >/dev/null 2>&1; }

builder=""
why=""
if works docker info; then
    builder=docker
elif command -v docker >/dev/null 2>&1; then
    why="docker is installed but its engine does not answer (docker info fails)"
fi
if [ -z "$builder" ] && works podman info; then
    builder=podman
elif [ -z "$builder" ] && command -v podman >/dev/null 2>&1; then
    why="${why:+$why; }podman is installed but podman info fails"
fi
if [ -z "$builder" ] && works buildah info; then
    builder=buildah
elif [ -z "$builder" ] && command -v buildah >/dev/null 2>&1; then
    why="${why:+$why; }buildah is installed but buildah info fails"
fi
if [ -z "$builder" ]; then
    echo "image: skipped: no working container builder (${why:-none of docker, podman, buildah is installed})"
    exit 0
fi

revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct HEAD 2>/dev/null || true)}
args=(--build-arg "POLICY=$policy" --build-arg "BUILD_GIT_REVISION=$revision")
if [ -n "$epoch" ]; then
    args+=(--build-arg "SOURCE_DATE_EPOCH=$epoch")
fi

echo "image: building $tag with $builder (policy $policy, revision $revision)"
case "$builder" in
    buildah) buildah bud -t "$tag" "${args[@]}" . ;;
    *) "$builder" build -t "$tag" "${args[@]}" . ;;
esac

# The image starts and is the revision just built.
case "$builder" in
    buildah)
        container=$(buildah from "$tag")
        trap 'buildah rm "$container" >/dev/null' EXIT
        version=$(buildah run "$container" -- /usr/local/bin/proxyd --version)
        size=$(buildah images --noheading --format '{{.Size}}' "$tag")
        ;;
    *)
        version=$("$builder" run --rm "$tag" --version)
        bytes=$("$builder" image inspect --format '{{.Size}}' "$tag")
        size="$bytes bytes ($((bytes / 1024 / 1024)) MiB)"
        ;;
esac
echo "image: $tag runs: $version"
case "$version" in
    *"git $revision"*) ;;
    *) echo "image: expected revision $revision in: $version" >&2; exit 1 ;;
esac
echo "image: $tag size: $size"
