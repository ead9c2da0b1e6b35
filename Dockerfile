# syntax=docker/dockerfile:1
#
# proxyd image: a build stage that runs deploy/build-stage.sh (the same script
# CI and `make image` run) with STATIC=1, and a `FROM scratch` runtime holding
# only the file system that script lays out: static proxyd and policyc, the
# compiled policy, a CA bundle, the SBOMs, /etc/passwd for UID 65532.
#
#   docker build -t proxyd .                        # policies/default.yaml
#   docker build -t proxyd --build-arg POLICY=fly . # policies/fly.yaml
#   docker run --rm -e PROXY_PASSWORD=s3cret -p 4750:4750 -p 9810:9810 proxyd
#   make image    # the same runtime stage, built offline from `make static` (no registry)
#
# Pin the build image by digest in production (`FROM image@sha256:...`).

FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
ARG POLICY=default
# `--version` metadata: the build context has no .git, so the revision and a
# reproducible date come in as build arguments (`make image` passes both);
# without them `--version` says "unknown".
ARG BUILD_GIT_REVISION=unknown
ARG SOURCE_DATE_EPOCH
# Static binaries and the image's file system in /out/rootfs (deploy/build-stage.sh).
ENV STATIC=1
RUN deploy/build-stage.sh /out "$POLICY"

# Nothing but what the build stage laid out: no shell, no package manager, no
# libc (the binaries are static). `make image` builds this stage verbatim,
# with the COPY pointed at a local build of the same file system.
# No HEALTHCHECK, by design: the image has no shell or curl to run one, and
# orchestrators probe /readyz and /healthz on the admin port instead (see
# deploy/kubernetes/deployment.yaml and docs/operator-kit.md).
FROM scratch
COPY --from=build /out/rootfs/ /
LABEL org.opencontainers.image.title="proxyd" org.opencontainers.image.description="SSRF-safe HTTP CONNECT egress proxy" io.github.proxyd.sbom="/usr/share/doc/proxyd/sbom/proxyd.cdx.json"
USER 65532:65532
# glibc's malloc is linked into the static binary, arenas and all: one arena,
# or freed pages stay with the worker threads and RSS creeps up under load
# (docs/proxyd.md, docs/soak.md). Static glibc reads this variable too.
ENV MALLOC_ARENA_MAX=1
# rustls-native-certs' roots for an https --policy-url (the bundle copied in).
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# 4750: the proxy (CONNECT only). 9810: admin (/healthz, /readyz, /policy, /metrics).
EXPOSE 4750 9810
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/proxyd"]
# Requires a proxy password (-e PROXY_PASSWORD=...): never an open proxy by default.
CMD ["--policy", "/etc/proxyd/policy/policy.bin", "--listen-ip", "0.0.0.0", "--admin-listen", "0.0.0.0:9810", "--proxy-password-env", "PROXY_PASSWORD"]
