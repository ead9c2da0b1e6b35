# syntax=docker/dockerfile:1
#
# proxyd image: a build stage that runs deploy/build-stage.sh (the same script
# CI runs), and a minimal non-root runtime with the compiled policy baked in.
#
#   docker build -t proxyd .                        # policies/default.yaml
#   docker build -t proxyd --build-arg POLICY=fly . # policies/fly.yaml
#   docker run --rm -p 4750:4750 -p 9810:9810 proxyd
#   make image                                      # docker, podman or buildah; tags proxyd:dev
#
# Pin both images by digest in production (`FROM image@sha256:...`).

FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
ARG POLICY=default
# `--version` metadata: the build context has no .git, so the revision and a
# reproducible date come in as build arguments (`make image` passes both);
# without them `--version` says "unknown".
ARG BUILD_GIT_REVISION=unknown
ARG SOURCE_DATE_EPOCH
RUN deploy/build-stage.sh /out "$POLICY"

# glibc, libgcc and CA roots only; no shell, no package manager; UID 65532.
# No HEALTHCHECK, by design: the image has no shell or curl to run one, and
# orchestrators probe /readyz and /healthz on the admin port instead (see
# deploy/kubernetes/deployment.yaml and docs/operator-kit.md).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bin/proxyd /out/bin/policyc /usr/local/bin/
# A directory, so a volume or ConfigMap mounted over it replaces the policy
# and proxyd reloads it live (it watches the directory, not the file).
COPY --from=build /out/policy/ /etc/proxyd/policy/
USER 65532:65532
# One malloc arena: with one per thread, freed pages stay with the worker
# threads and RSS creeps up under load (docs/proxyd.md, docs/soak.md).
ENV MALLOC_ARENA_MAX=1
# 4750: the proxy (CONNECT only). 9810: admin (/healthz, /readyz, /policy, /metrics).
EXPOSE 4750 9810
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/proxyd"]
# Requires a proxy password (-e PROXY_PASSWORD=...): never an open proxy by default.
CMD ["--policy", "/etc/proxyd/policy/policy.bin", "--listen-ip", "0.0.0.0", "--admin-listen", "0.0.0.0:9810", "--proxy-password-env", "PROXY_PASSWORD"]
