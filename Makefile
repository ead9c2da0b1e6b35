# Everything a developer or CI runs. Needs only the Rust toolchain (cargo).
CARGO ?= cargo
POLICYC := target/release/policyc
PROXYD := target/release/proxyd
POLICIES := $(wildcard policies/*.yaml)
POLICYC_RUN = $(CARGO) run --quiet --locked -p policyc --
# policy-ci: the ref whose policies the diff compares against, and where outputs go.
BASE ?= origin/main
POLICY_CI := target/policy-ci

.PHONY: all build test soak lint lint-policies policy-ci image-stage image man completions kubernetes-policy fmt-check clippy doc run quickstart bench clean fuzz-smoke

all: build

build:
	$(CARGO) build --release --workspace --locked

## test: every test: unit, property, end-to-end (real binaries), schema, benches in test mode, policies.
test: lint-policies
	$(CARGO) test --workspace --all-targets --locked
	$(CARGO) test --workspace --doc --locked

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

## image: the container image from the Dockerfile (tag IMAGE, default proxyd:dev; POLICY as for
## image-stage) with docker (if its engine answers), podman or buildah; prints the image size.
## Without a working builder it prints "image: skipped: ..." and succeeds.
image:
	deploy/build-image.sh $(or $(IMAGE),proxyd:dev) $(or $(IMAGE_POLICY),default)

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
