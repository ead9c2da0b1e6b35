#!/usr/bin/env bash
# Builds the container image offline: the static binaries and the image's
# file system come from `STATIC=1 deploy/build-stage.sh` (the Dockerfile's
# build stage, run here), and the image is the Dockerfile's own runtime stage
# (`FROM scratch`, nothing pulled) with its COPY --from=build pointed at that
# file system. So `make image` and `docker build .` ship the same layout, and
# this one needs no registry.
#
# Builder: docker (only if its engine answers: a docker client without an
# engine does not count), podman, or buildah. Without one it prints a
# "skipped:" line and exits 0. With one, any failure fails loudly. After the
# build it runs `proxyd --version` in the image (podman/docker), checks the
# revision, prints the size and fails above IMAGE_MAX_MIB (default 25).
#
#   deploy/build-image.sh [TAG] [POLICY]      (default localhost/proxyd:dev, default)
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-localhost/proxyd:dev}
policy=${2:-default}
max_mib=${IMAGE_MAX_MIB:-25}
stage=${IMAGE_STAGE_DIR:-target/static}

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
# podman in a sandbox without systemd: cgroupfs and a file event log work
# where the systemd defaults do not; runc is the runtime the distribution ships.
if [ "$builder" = podman ]; then
    builder_cmd=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)
else
    builder_cmd=("$builder")
fi

revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

echo "image: static build and image file system (STATIC=1 deploy/build-stage.sh $stage $policy)"
STATIC=1 deploy/build-stage.sh "$stage" "$policy"

# The Dockerfile's last stage, verbatim but for where the file system comes from.
containerfile="$stage/Containerfile"
awk '/^FROM /{ stage++ } stage == 2' Dockerfile |
    sed 's#^COPY --from=build /out/rootfs/ /#COPY rootfs/ /#' >"$containerfile"
if ! grep -q '^FROM scratch' "$containerfile" || ! grep -q '^COPY rootfs/ /$' "$containerfile"; then
    echo "image: the Dockerfile's runtime stage is not 'FROM scratch' + 'COPY --from=build /out/rootfs/ /':" >&2
    cat "$containerfile" >&2
    exit 1
fi

echo "image: building $tag with $builder from $containerfile (policy $policy, revision $revision)"
case "$builder" in
    buildah) buildah bud --layers=false -f "$containerfile" -t "$tag" "$stage" ;;
    *) "${builder_cmd[@]}" build -f "$containerfile" -t "$tag" "$stage" ;;
esac

# The image starts and is the revision just built.
case "$builder" in
    buildah)
        container=$(buildah from "$tag")
        trap 'buildah rm "$container" >/dev/null' EXIT
        version=$(buildah run "$container" -- /usr/local/bin/proxyd --version)
        ;;
    *)
        # Explicit limits no higher than ours: the engine's defaults (nofile 1048576) are
        # above the hard limits of a sandbox, where raising them fails.
        hard() { case "$1" in unlimited) echo "$2" ;; *) [ "$1" -lt "$2" ] && echo "$1" || echo "$2" ;; esac; }
        nofile=$(hard "$(ulimit -Hn)" 65536)
        nproc=$(hard "$(ulimit -Hu)" 4096)
        version=$("${builder_cmd[@]}" run --rm --network none --ulimit "nofile=$nofile:$nofile" \
            --ulimit "nproc=$nproc:$nproc" "$tag" --version)
        ;;
esac
bytes=$("${builder_cmd[@]}" image inspect --format '{{.Size}}' "$tag")
echo "image: $tag runs: $version"
case "$version" in
    *"git $revision"*) ;;
    *) echo "image: expected revision $revision in: $version" >&2; exit 1 ;;
esac
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "image: $tag size: $bytes bytes ($mib MiB; limit $max_mib MiB)"
if [ "$bytes" -gt $((max_mib * 1024 * 1024)) ]; then
    echo "image: $tag is larger than $max_mib MiB" >&2
    exit 1
fi
