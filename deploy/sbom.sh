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
    # Each component as "name version licensed" from the JSON cargo-cyclonedx pretty-prints
    # (one field per line; a component's licenses come before its purl). awk, not python or
    # jq: the Dockerfile's build image has neither.
    awk '
        /"bom-ref":/ { lic = 0 }
        /"licenses":/ { lic = 1 }
        /"purl": "pkg:cargo\// {
            p = $0; sub(/.*"pkg:cargo\//, "", p); sub(/[?"].*/, "", p)
            at = index(p, "@"); print substr(p, 1, at - 1), substr(p, at + 1), lic
        }' "$out/$b.cdx.json" | sort -u >"$out/.$b.components"
    if ! grep -q '"bomFormat": "CycloneDX"' "$out/$b.cdx.json"; then
        echo "sbom: $out/$b.cdx.json is not a CycloneDX document" >&2
        exit 1
    fi
    linked=0
    problems=""
    while read -r name version; do
        [ "$name" = "$b" ] && continue
        version=${version#v}
        linked=$((linked + 1))
        if ! grep -q "^$name $version " "$out/.$b.components"; then
            problems="$problems $name@$version(missing)"
        elif ! grep -q "^$name $version 1\$" "$out/.$b.components"; then
            problems="$problems $name@$version(no license)"
        fi
    done <"$out/.$b.linked"
    if [ -n "$problems" ] || [ "$linked" -eq 0 ]; then
        echo "sbom: $b: linked crates not named with version and license:${problems:- none linked?}" >&2
        exit 1
    fi
    echo "sbom: $b: $out/$b.cdx.json: $(wc -l <"$out/.$b.components") components; all $linked linked crates named with version and license"
    rm -f "$out/.$b.components"
    rm -f "$out/.$b.linked"
done
