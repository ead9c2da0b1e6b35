# syntax=docker/dockerfile:1
#
# proxyd image: a build stage that runs deploy/build-stage.sh (the same script
# CI runs), and a minimal non-root runtime with the compiled policy baked in.
#
#   docker build -t proxyd .                        # policies/default.yaml
#   docker build -t proxyd --build-arg POLICY=fly . # policies/fly.yaml
#   docker run --rm -p 4750:4750 -p 9810:9810 proxyd
#
# Pin both images by digest in production (`FROM image@sha256:...`).

FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
ARG POLICY=default
RUN deploy/build-stage.sh /out "$POLICY"

# glibc, libgcc and CA roots only; no shell, no package manager; UID 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bin/proxyd /out/bin/policyc /usr/local/bin/
# A directory, so a volume or ConfigMap mounted over it replaces the policy
# and proxyd reloads it live (it watches the directory, not the file).
COPY --from=build /out/policy/ /etc/proxyd/policy/
USER 65532:65532
# 4750: the proxy (CONNECT only). 9810: admin (/healthz, /readyz, /policy, /metrics).
EXPOSE 4750 9810
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/proxyd"]
# Requires a proxy password (-e PROXY_PASSWORD=...): never an open proxy by default.
CMD ["--policy", "/etc/proxyd/policy/policy.bin", "--listen-ip", "0.0.0.0", "--admin-listen", "0.0.0.0:9810", "--proxy-password-env", "PROXY_PASSWORD"]
