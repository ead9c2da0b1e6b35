#!/bin/sh
# The Dockerfile's build stage as one script, so CI runs exactly the commands
# the image build runs (with CARGO_PROFILE=dev to reuse the test build).
#
#   deploy/build-stage.sh OUT_DIR [POLICY]
#   STATIC=1 deploy/build-stage.sh OUT_DIR [POLICY]    (the image: `make static`, the Dockerfile)
#
# Builds policyc and proxyd (--locked), lints every ACL in policies/ with
# warnings as errors, compiles policies/POLICY.yaml (default: default),
# refusing to if its tests (policies/tests/POLICY.yaml) fail, and leaves:
#   OUT_DIR/bin/proxyd, OUT_DIR/bin/policyc, OUT_DIR/policy/policy.bin
#
# With STATIC=1 the binaries are linked statically (glibc crt-static: no
# runtime dependency but the kernel: no program interpreter, no NEEDED
# library, or the build fails), and it also lays out the image's whole
# file system, which the Dockerfile and `make image` copy into `FROM scratch`:
#   OUT_DIR/rootfs/usr/local/bin/{proxyd,policyc}
#   OUT_DIR/rootfs/etc/proxyd/policy/policy.bin
#   OUT_DIR/rootfs/etc/ssl/certs/ca-certificates.crt   (roots for an https --policy-url)
#   OUT_DIR/rootfs/etc/passwd, OUT_DIR/rootfs/etc/group (UID/GID 65532 "nonroot")
#   OUT_DIR/rootfs/usr/share/doc/proxyd/sbom/{proxyd,policyc}.cdx.json (deploy/sbom.sh)
set -eu

out=${1:?usage: deploy/build-stage.sh OUT_DIR [POLICY]}
policy=${2:-default}
profile=${CARGO_PROFILE:-release}
static=${STATIC:-0}
case "$profile" in
    dev) profile_dir=debug ;;
    *) profile_dir=$profile ;;
esac
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/$profile_dir"

if [ ! -f "policies/$policy.yaml" ]; then
    echo "build-stage: no policy policies/$policy.yaml" >&2
    exit 2
fi

if [ "$static" = 1 ]; then
    # crt-static needs an explicit --target: then RUSTFLAGS apply to the
    # binaries only, not to build scripts and proc-macros, which rustc must
    # load as shared objects (crt-static without --target breaks them).
    triple=$(rustc -vV | sed -n 's/^host: //p')
    case "$triple" in
        *-linux-gnu) ;;
        *) echo "build-stage: STATIC=1 supports *-linux-gnu hosts, not $triple" >&2; exit 2 ;;
    esac
    # static-pie (rustc's default with crt-static): the executable keeps ASLR.
    # glibc's ldd says "statically linked" for it ("not a dynamic executable"
    # only for a non-PIE one, which would load at a fixed address); either way
    # it has no program interpreter and no DT_NEEDED library, checked below.
    RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
        cargo build --profile "$profile" --locked --target "$triple" -p policyc -p proxyd
    bin="$target_dir/$triple/$profile_dir"
    for b in proxyd policyc; do
        says=$(LC_ALL=C ldd "$bin/$b" 2>&1 || true)
        case "$says" in
            *"not a dynamic executable"* | *"statically linked"*) ;;
            *) echo "build-stage: $bin/$b is not static: ldd says: $says" >&2; exit 1 ;;
        esac
        if LC_ALL=C readelf -ld "$bin/$b" | grep -q -e 'INTERP' -e '(NEEDED)'; then
            echo "build-stage: $bin/$b has a program interpreter or a NEEDED library:" >&2
            LC_ALL=C readelf -ld "$bin/$b" | grep -e 'INTERP' -e '(NEEDED)' >&2
            exit 1
        fi
        echo "build-stage: $bin/$b: static (ldd: $(echo "$says" | tr -d '\t'); no PT_INTERP, no NEEDED)"
    done
else
    cargo build --profile "$profile" --locked -p policyc -p proxyd
fi

mkdir -p "$out/bin" "$out/policy"
"$bin/policyc" check --deny-warnings policies/*.yaml
"$bin/policyc" compile "policies/$policy.yaml" --test "policies/tests/$policy.yaml" -o "$out/policy/policy.bin"
"$bin/policyc" inspect "$out/policy/policy.bin"
cp "$bin/proxyd" "$bin/policyc" "$out/bin/"

if [ "$static" = 1 ]; then
    # The image's file system (OUT_DIR/rootfs): laid out here, once, so the
    # Dockerfile and `make image` ship exactly the same files.
    root="$out/rootfs"
    rm -rf "$root"
    mkdir -p "$root/usr/local/bin" "$root/etc/proxyd/policy" "$root/etc/ssl/certs" "$root/usr/share/doc/proxyd/sbom"
    cp "$out/bin/proxyd" "$out/bin/policyc" "$root/usr/local/bin/"
    cp "$out/policy/policy.bin" "$root/etc/proxyd/policy/"
    # rustls-native-certs reads this file (the Debian/Ubuntu path); without it
    # an https --policy-url needs --policy-url-ca.
    bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
    if [ ! -s "$bundle" ]; then
        echo "build-stage: no CA bundle at $bundle (install ca-certificates or set CA_BUNDLE)" >&2
        exit 1
    fi
    cp "$bundle" "$root/etc/ssl/certs/ca-certificates.crt"
    # Names for UID/GID 65532, as in distroless's nonroot: `ps` and `id` in a debug
    # sidecar show "nonroot"; proxyd itself never looks them up.
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    deploy/sbom.sh "$root/usr/share/doc/proxyd/sbom"
    chmod -R a+rX,go-w "$root"
    echo "build-stage: image file system in $root"
fi
