#!/bin/sh
# The Dockerfile's build stage as one script, so CI runs exactly the commands
# the image build runs (with CARGO_PROFILE=dev to reuse the test build).
#
#   deploy/build-stage.sh OUT_DIR [POLICY]
#
# Builds policyc and proxyd (--locked), lints every ACL in policies/ with
# warnings as errors, compiles policies/POLICY.yaml (default: default),
# refusing to if its tests (policies/tests/POLICY.yaml) fail, and leaves:
#   OUT_DIR/bin/proxyd, OUT_DIR/bin/policyc, OUT_DIR/policy/policy.bin
set -eu

out=${1:?usage: deploy/build-stage.sh OUT_DIR [POLICY]}
policy=${2:-default}
profile=${CARGO_PROFILE:-release}
case "$profile" in
    dev) profile_dir=debug ;;
    *) profile_dir=$profile ;;
esac
bin="${CARGO_TARGET_DIR:-target}/$profile_dir"

if [ ! -f "policies/$policy.yaml" ]; then
    echo "build-stage: no policy policies/$policy.yaml" >&2
    exit 2
fi

cargo build --profile "$profile" --locked -p policyc -p proxyd

mkdir -p "$out/bin" "$out/policy"
"$bin/policyc" check --deny-warnings policies/*.yaml
"$bin/policyc" compile "policies/$policy.yaml" --test "policies/tests/$policy.yaml" -o "$out/policy/policy.bin"
"$bin/policyc" inspect "$out/policy/policy.bin"
cp "$bin/proxyd" "$bin/policyc" "$out/bin/"
