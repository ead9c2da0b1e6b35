#!/bin/sh
# CycloneDX JSON SBOMs, one per shipped binary, made by cargo-cyclonedx (the
# CycloneDX project's own tool, installed from crates.io when missing), then
# checked: every crate linked into the binary (Cargo.lock's normal
# dependencies for the target, proc-macros and build-only crates excluded)
# is named with its version and a license.
#
#   deploy/sbom.sh OUT_DIR      -> OUT_DIR/proxyd.cdx.json, OUT_DIR/policyc.cdx.json
#
# It never writes an SBOM by hand: a file this script did not get from
# cargo-cyclonedx is never shipped.
set -eu

out=${1:?usage: deploy/sbom.sh OUT_DIR}
triple=$(rustc -vV | sed -n 's/^host: //p')

if ! cargo cyclonedx --version >/dev/null 2>&1; then
    echo "sbom: installing cargo-cyclonedx (cargo install --locked)"
    cargo install --locked cargo-cyclonedx@0.5.9
fi

# cargo-cyclonedx writes NAME_bin.cdx.json next to each package's Cargo.toml;
# collect the two shipped binaries' files and remove every one it wrote.
cleanup() { find . -path ./target -prune -o -name '*_bin.cdx.json' -type f -exec rm -f {} + 2>/dev/null || true; }
trap cleanup EXIT
cleanup
cargo cyclonedx --quiet --format json --spec-version 1.5 --describe binaries --no-build-deps --target "$triple"
mkdir -p "$out"
for b in proxyd policyc; do
    if [ ! -s "$b/${b}_bin.cdx.json" ]; then
        echo "sbom: cargo-cyclonedx wrote no $b/${b}_bin.cdx.json" >&2
        exit 1
    fi
    cp "$b/${b}_bin.cdx.json" "$out/$b.cdx.json"
    # What is linked: the normal dependency graph for this target, without
    # proc-macros (they run in rustc, they are not in the binary).
    cargo tree --locked --quiet -p "$b" --target "$triple" -e normal,no-proc-macro --prefix none -f '{p}' |
        sed 's/ (.*//; s/ (\*)//' | sort -u >"$out/.$b.linked"
    python3 - "$out/$b.cdx.json" "$out/.$b.linked" "$b" <<'EOF'
import json, sys
bom_path, linked_path, binary = sys.argv[1:4]
bom = json.load(open(bom_path))
assert bom.get("bomFormat") == "CycloneDX", "not a CycloneDX document"
components = {}
def walk(items):
    for c in items or []:
        components[(c["name"], c.get("version"))] = c
        walk(c.get("components"))
walk(bom.get("components"))
top = bom["metadata"]["component"]
missing, unlicensed = [], []
for line in open(linked_path):
    name, version = line.split()[:2]
    version = version.lstrip("v")
    if name == top["name"]:
        continue
    c = components.get((name, version))
    if c is None:
        missing.append(f"{name} {version}")
    elif not c.get("licenses"):
        unlicensed.append(f"{name} {version}")
if missing or unlicensed:
    sys.exit(f"sbom: {binary}: linked but not in the SBOM: {missing}; no license: {unlicensed}")
count = sum(1 for _ in open(linked_path)) - 1
print(f"sbom: {binary}: {bom_path}: {len(components)} components; all {count} linked crates named with version and license")
EOF
    rm -f "$out/.$b.linked"
done
