# Everything a developer or CI runs. Needs only the Rust toolchain (cargo).
CARGO ?= cargo
POLICYC := target/release/policyc
PROXYD := target/release/proxyd
POLICIES := $(wildcard policies/*.yaml)
POLICYC_RUN = $(CARGO) run --quiet --locked -p policyc --
# policy-ci: the ref whose policies the diff compares against, and where outputs go.
BASE ?= origin/main
POLICY_CI := target/policy-ci

.PHONY: all build test client-deps soak lint lint-policies policy-ci image-stage image man completions kubernetes-policy fmt-check clippy doc run quickstart bench clean fuzz-smoke

all: build

build:
	$(CARGO) build --release --workspace --locked

## test: every test: unit, property, end-to-end (real binaries), schema, benches in test mode, policies.
test: lint-policies client-deps
	$(CARGO) test --workspace --all-targets --locked
	$(CARGO) test --workspace --doc --locked

## client-deps: undici for the real-client suite's Node stack (tests/e2e/clients.rs), pinned by
## tests/clients/package-lock.json, installed into target/clients/node (never committed). Never fatal:
## without npm or the registry, the suite skips that stack (fails it when PROXYD_CLIENTS_REQUIRED=1).
CLIENTS_NODE := target/clients/node
client-deps:
	@mkdir -p $(CLIENTS_NODE)
	@if cmp -s tests/clients/package-lock.json $(CLIENTS_NODE)/package-lock.json && [ -d $(CLIENTS_NODE)/node_modules/undici ]; then \
		echo "client-deps: undici already installed in $(CLIENTS_NODE)"; \
	elif command -v npm >/dev/null 2>&1; then \
		cp tests/clients/package.json tests/clients/package-lock.json $(CLIENTS_NODE)/; \
		npm ci --prefix $(CLIENTS_NODE) --no-audit --no-fund --silent \
			|| echo "client-deps: npm ci failed; the real-client suite will skip Node undici"; \
	else \
		echo "client-deps: no npm; the real-client suite will skip Node undici"; \
	fi

## soak: the real proxyd under mixed hostile load, policy churn and failing upstreams and
## resolvers for DURATION (default 2m; e.g. DURATION=10m or 1h), then every assertion of
## docs/soak.md; prints the results table (also written to SOAK_REPORT when set).
DURATION ?= 2m
soak:
	$(CARGO) build --locked -p proxyd -p policyc
	SOAK_DURATION=$(DURATION) $(CARGO) test --locked -p e2e --test e2e soak -- --ignored --nocapture --test-threads 1

## lint-policies: every shipped policy must be clean, warnings included, and pass its
## policy tests (policies/tests/NAME.yaml for policies/NAME.yaml; a policy without one fails).
lint-policies:
	$(POLICYC_RUN) check --deny-warnings $(POLICIES)
	@set -e; for p in $(POLICIES); do \
		t=policies/tests/$$(basename $$p); \
		test -f $$t || { echo "lint-policies: $$p has no policy tests ($$t)" >&2; exit 1; }; \
		echo "policyc test $$p $$t"; \
		$(POLICYC_RUN) test $$p $$t; \
	done

## policy-ci: what examples/ci/policy.yml runs in GitHub Actions, locally: lint (GitHub annotations
## on stdout, SARIF to $(POLICY_CI)/check.sarif), policy tests, a markdown diff of each policy against
## its version at BASE (default origin/main; skipped when BASE or the file there does not exist),
## and the compiled tables (written only when their tests pass) in $(POLICY_CI)/.
policy-ci:
	@mkdir -p $(POLICY_CI)/base
	$(POLICYC_RUN) check --deny-warnings --format github $(POLICIES)
	$(POLICYC_RUN) check --deny-warnings --format sarif $(POLICIES) > $(POLICY_CI)/check.sarif
	@set -e; for p in $(POLICIES); do \
		name=$$(basename $$p .yaml); t=policies/tests/$$name.yaml; \
		echo "policyc test $$p $$t"; \
		$(POLICYC_RUN) test $$p $$t --format github; \
		if git rev-parse --verify --quiet "$(BASE)^{commit}" >/dev/null && git cat-file -e "$(BASE):$$p" 2>/dev/null; then \
			git show "$(BASE):$$p" > $(POLICY_CI)/base/$$name.yaml; \
			$(POLICYC_RUN) diff $(POLICY_CI)/base/$$name.yaml $$p --format markdown > $(POLICY_CI)/$$name.diff.md; \
			echo "policyc diff $(BASE):$$p $$p -> $(POLICY_CI)/$$name.diff.md"; \
		else \
			echo "policy-ci: no $(BASE):$$p to diff against (no such ref, or a new policy); diff skipped"; \
		fi; \
		$(POLICYC_RUN) compile $$p -o $(POLICY_CI)/$$name.table --test $$t; \
	done

## lint: formatting, clippy and rustdoc (broken or private doc links) with warnings denied.
lint: fmt-check clippy doc
fmt-check:
	$(CARGO) fmt --all -- --check
clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --locked

## run: build, compile the default policy, and start proxyd on 127.0.0.1:4750 (Ctrl-C stops it).
run: build
	@mkdir -p target/policy
	$(POLICYC) compile policies/default.yaml -o target/policy/default.bin
	@echo "proxyd on 127.0.0.1:4750 -- try: curl -x http://127.0.0.1:4750 https://example.com/  (denied: curl -x 127.0.0.1:4750 --proxytunnel http://127.0.0.1:22/; metrics: curl 127.0.0.1:9810/metrics)"
	$(PROXYD) --config-file deploy/dev.yaml --policy target/policy/default.bin --log-format text

## quickstart: the README's quick start, run for real (.ci/quickstart.sh): it must be exactly
## `make run` and `make test`; then `make run` must answer /readyz within 120 s and refuse a
## CONNECT to 127.0.0.1:22 with 403. Everything it starts is stopped. .ci/run runs it after the tests.
quickstart:
	.ci/quickstart.sh

## image-stage: the Dockerfile's build stage (deploy/build-stage.sh) with the dev profile, so CI
## runs exactly the image build's commands; output in target/image-stage/.
image-stage:
	CARGO_PROFILE=dev deploy/build-stage.sh target/image-stage $(or $(IMAGE_POLICY),default)

## image: the container image (tag IMAGE, default localhost/proxyd:dev; POLICY as for
## image-stage), built offline: `make static`'s file system into the Dockerfile's own
## `FROM scratch` runtime stage, with docker (if its engine answers), podman or buildah;
## prints the image size and fails above 25 MiB or when a builder fails. Without a working
## builder it prints "image: skipped: ..." and succeeds.
image:
	deploy/build-image.sh $(or $(IMAGE),localhost/proxyd:dev) $(or $(IMAGE_POLICY),default)

# ---- shipping: static binaries, SBOM, the image run for real, Kubernetes manifests played,
# ---- a fleet behind HAProxy (docs/operations.md "Shipping" and "Running more than one").
.PHONY: static static-e2e sbom image-test kube-play-test fleet-test
IMAGE_TAG = $(or $(IMAGE),localhost/proxyd:dev)
STATIC_BIN := target/static/bin

## static: proxyd and policyc linked statically (glibc crt-static, release, --target the host
## triple), checked static, and the image's file system, in target/static/ (deploy/build-stage.sh).
static:
	STATIC=1 deploy/build-stage.sh target/static $(or $(IMAGE_POLICY),default)

## static-e2e: the end-to-end tests (tests/) against the static binaries of `make static`.
static-e2e:
	TESTKIT_PROXYD_BIN=$(CURDIR)/$(STATIC_BIN)/proxyd TESTKIT_POLICYC_BIN=$(CURDIR)/$(STATIC_BIN)/policyc \
		$(CARGO) test --locked -p e2e --test e2e

## sbom: CycloneDX JSON per binary in target/sbom/ (cargo-cyclonedx, installed when missing),
## checked to name every linked crate of Cargo.lock with its version and license.
sbom:
	deploy/sbom.sh target/sbom

## image-test: runs IMAGE (default localhost/proxyd:dev, from `make image`) with podman + runc on
## the host network, loopback ports: /readyz 200, CONNECT to an allowed loopback echo, 403 for
## 169.254.169.254 before any connect, UID 65532, SIGTERM drains and exits 0 (tests/e2e/image.rs).
image-test:
	E2E_IMAGE=$(IMAGE_TAG) $(CARGO) test --locked -p e2e --test e2e image:: -- --ignored --nocapture --test-threads 1

## kube-play-test: deploy/kubernetes/ rendered (deploy/kube-render.sh) and run with `podman kube
## play` on IMAGE: ready by its own probe, CONNECTs as in image-test, a ConfigMap update swapped
## in as the kubelet does (..data symlink) and reloaded live (tests/e2e/kube_play.rs).
kube-play-test:
	$(CARGO) build --locked -p policyc
	E2E_IMAGE=$(IMAGE_TAG) $(CARGO) test --locked -p e2e --test e2e kube_play:: -- --ignored --nocapture --test-threads 1

## fleet-test: 3 proxyd replicas behind HAProxy, signed policy from a local HTTP origin
## (--policy-url), Prometheus scraping all with the alert rules; publish, tamper, rolling
## upgrade under load with 0 failed CONNECTs; prints a table (tests/e2e/fleet.rs).
fleet-test:
	$(CARGO) build --locked -p proxyd -p policyc
	$(CARGO) test --locked -p e2e --test e2e fleet:: -- --ignored --nocapture --test-threads 1

## man: man pages generated from the clap definitions into target/man/ (policyc.1, policyc-*.1,
## proxyd.8). Read one with: man -l target/man/proxyd.8
man:
	@mkdir -p target/man
	$(CARGO) run --quiet --locked -p policyc -- man target/man
	$(CARGO) run --quiet --locked -p proxyd -- --generate-man target/man

## completions: shell completion scripts for both binaries into target/completions/.
completions:
	@mkdir -p target/completions
	@set -e; for shell in bash zsh fish; do \
		$(CARGO) run --quiet --locked -p policyc -- completions $$shell > target/completions/policyc.$$shell; \
		$(CARGO) run --quiet --locked -p proxyd -- --completions $$shell > target/completions/proxyd.$$shell; \
	done
	@ls target/completions

## kubernetes-policy: compile POLICY (default policies/default.yaml, with its tests) into
## deploy/kubernetes/policy.bin, signed with SIGNING_KEY (the deployment verifies it against
## deploy/kubernetes/policy-signing.pub), which the kustomization's ConfigMap generator ships.
kubernetes-policy:
	$(POLICYC_RUN) compile $(or $(POLICY),policies/default.yaml) \
		--test policies/tests/$$(basename $(or $(POLICY),policies/default.yaml)) -o deploy/kubernetes/policy.bin \
		--sign $(or $(SIGNING_KEY),$(error set SIGNING_KEY=path/to/private.key: see docs/signing.md))

## bench: every benchmark, each reporting ratios against a baseline measured in the same run:
## decide/compile/load (criterion), the daemon under load, and reload latency.
bench:
	$(CARGO) bench --locked -p egress-policy --bench decide
	$(CARGO) bench --locked -p egress-policy --bench signature
	$(CARGO) bench --locked -p policyc --bench diff
	$(CARGO) bench --locked -p policyc --bench suggest
	$(CARGO) bench --locked -p proxyd --bench load
	$(CARGO) bench --locked -p proxyd --bench load -- lifecycle
	$(CARGO) bench --locked -p proxyd --bench reload

## fuzz-smoke: build every fuzz target in fuzz/ (its own workspace, outside the main one)
## with ASAN on the stable toolchain, then run each for FUZZ_SECONDS (default 20) from the
## checked-in seeds in fuzz/corpus/<target>; new inputs go to fuzz/scratch/ (ignored).
fuzz-smoke:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	RUSTC_BOOTSTRAP=1 $(CARGO) fuzz build
	@set -e; for t in acl_check table_decode signed_table authority host_canonical proxy_protocol address_classify policytest_parse policy_diff decision_log suggest_edit; do \
		mkdir -p fuzz/scratch/$$t; \
		echo "fuzz-smoke: $$t for $${FUZZ_SECONDS:-20}s"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t fuzz/scratch/$$t fuzz/corpus/$$t -- \
			-max_total_time=$${FUZZ_SECONDS:-20} -print_final_stats=0; \
	done

clean:
	$(CARGO) clean
