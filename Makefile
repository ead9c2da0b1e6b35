# Everything a developer or CI runs. Needs only the Rust toolchain (cargo).
CARGO ?= cargo
POLICYC := target/release/policyc
POLICIES := $(wildcard policies/*.yaml)

.PHONY: all build test lint lint-policies fmt-check clippy run bench clean

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

## run: compile the embedded default policy and show how it decides.
## (proxyd, the data plane, is the next milestone; until it exists this shows policyc.)
run: build
	@mkdir -p target/policy
	$(POLICYC) compile policies/default.yaml -o target/policy/default.bin
	$(POLICYC) inspect target/policy/default.bin
	@echo
	$(POLICYC) explain target/policy/default.bin "" api.github.com:443
	@echo
	$(POLICYC) explain target/policy/default.bin "" metadata.google.internal:80

## bench: criterion benchmarks of decide, compile and load-and-verify, with same-run ratios.
bench:
	$(CARGO) bench --locked -p policyc --bench decide

clean:
	$(CARGO) clean
