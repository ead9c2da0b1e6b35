# Everything a developer or CI runs. Needs only the Rust toolchain (cargo).
CARGO ?= cargo
POLICYC := target/release/policyc
PROXYD := target/release/proxyd
POLICIES := $(wildcard policies/*.yaml)

.PHONY: all build test lint lint-policies fmt-check clippy run bench clean fuzz-smoke

all: build

build:
	$(CARGO) build --release --workspace --locked

## test: every test: unit, property, end-to-end (real binaries), schema, benches in test mode, policies.
test: lint-policies
	$(CARGO) test --workspace --all-targets --locked

## lint-policies: every shipped policy must be clean, warnings included.
lint-policies:
	$(CARGO) run --quiet --locked -p policyc -- check --deny-warnings $(POLICIES)

## lint: formatting and clippy with warnings denied.
lint: fmt-check clippy
fmt-check:
	$(CARGO) fmt --all -- --check
clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## run: build, compile the default policy, and start proxyd on 127.0.0.1:4750 (Ctrl-C stops it).
run: build
	@mkdir -p target/policy
	$(POLICYC) compile policies/default.yaml -o target/policy/default.bin
	@echo "proxyd on 127.0.0.1:4750 -- try: curl -x http://127.0.0.1:4750 https://example.com/  (denied: curl -x 127.0.0.1:4750 --proxytunnel http://127.0.0.1:22/)"
	$(PROXYD) --config-file deploy/dev.yaml --policy target/policy/default.bin --log-format text

## bench: every benchmark, each reporting ratios against a baseline measured in the same run:
## decide/compile/load (criterion), the daemon under load, and reload latency.
bench:
	$(CARGO) bench --locked -p policyc --bench decide
	$(CARGO) bench --locked -p proxyd --bench load
	$(CARGO) bench --locked -p proxyd --bench reload

## fuzz-smoke: build every fuzz target in fuzz/ (its own workspace, outside the main one)
## with ASAN on the stable toolchain, then run each for FUZZ_SECONDS (default 20) from the
## checked-in seeds in fuzz/corpus/<target>; new inputs go to fuzz/scratch/ (ignored).
fuzz-smoke:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	RUSTC_BOOTSTRAP=1 $(CARGO) fuzz build
	@set -e; for t in acl_check table_decode authority host_canonical proxy_protocol address_classify; do \
		mkdir -p fuzz/scratch/$$t; \
		echo "fuzz-smoke: $$t for $${FUZZ_SECONDS:-20}s"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t fuzz/scratch/$$t fuzz/corpus/$$t -- \
			-max_total_time=$${FUZZ_SECONDS:-20} -print_final_stats=0; \
	done

clean:
	$(CARGO) clean
