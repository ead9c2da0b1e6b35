#!/usr/bin/env bash
# The README's quick start, run for real (`make quickstart`; .ci/run runs it after `make test`):
#  1. the quick start block is exactly the two commands `make run` and `make test`,
#     and .ci/run calls `make test`, so what the README promises is what CI runs;
#  2. `make run` serves: its admin listener answers /readyz within 120 s, and a CONNECT
#     to 127.0.0.1:22 through it is refused with 403 (loopback is denied by default).
# Whatever happens, everything it started is stopped before it exits.
set -euo pipefail
cd "$(dirname "$0")/.."

PROXY=127.0.0.1:4750    # deploy/dev.yaml: ip, port
ADMIN=127.0.0.1:9810    # deploy/dev.yaml: admin_listen
READY_WITHIN=120        # seconds

fail() { echo "quickstart: $*" >&2; exit 1; }

# --- 1. The README's quick start and CI agree. ---------------------------------------------
# The first ```sh block under "## Quick start", comments and blank lines dropped.
commands="$(awk '
    /^## Quick start/ { in_section = 1; next }
    in_section && /^## / { exit }
    in_section && !in_block && /^```sh/ { in_block = 1; next }
    in_block && /^```/ { exit }
    in_block { sub(/#.*/, ""); gsub(/^[ \t]+|[ \t]+$/, ""); if ($0 != "") print }
' README.md)"
[ "$commands" = $'make run\nmake test' ] ||
    fail "the README's quick start must be exactly 'make run' and 'make test', found: ${commands:-nothing}"
grep -Eq '^[^#]*\bmake test\b' .ci/run || fail ".ci/run does not run 'make test'"
echo "quickstart: README quick start is 'make run' + 'make test'; .ci/run runs 'make test'"

# --- 2. `make run` serves, and refuses loopback. -------------------------------------------
# HTTP status of GET http://$1$2, or 000 when nothing answers. curl if present, else bash's /dev/tcp.
http_get_status() {
    if command -v curl >/dev/null 2>&1; then
        curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1$2" || true
    else
        local host="${1%:*}" port="${1##*:}" line=""
        # (The group keeps 2>/dev/null from applying to the whole shell, as a bare `exec` would.)
        if { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
            printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$2" "$1" >&3
            IFS= read -r -t 2 line <&3 || true
            exec 3<&- 3>&-
        fi
        line="${line#HTTP/1.? }"
        printf '%s' "${line:0:3}" | grep -Eq '^[0-9]{3}$' && printf '%s' "${line:0:3}" || printf '000'
    fi
}

# Status of the proxy's answer to `CONNECT $2` sent to proxy $1.
connect_status() {
    if command -v curl >/dev/null 2>&1; then
        # curl fails (exit 56) when the tunnel is refused; the CONNECT answer's code is what counts.
        NO_PROXY='' no_proxy='' curl -s -o /dev/null -w '%{http_connect}' --max-time 10 \
            -x "$1" --proxytunnel "http://$2/" || true
    else
        local host="${1%:*}" port="${1##*:}" line=""
        { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || { printf '000'; return; }
        printf 'CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n' "$2" "$2" >&3
        IFS= read -r -t 10 line <&3 || true
        exec 3<&- 3>&-
        line="${line#HTTP/1.? }"
        printf '%s' "${line:0:3}"
    fi
}

[ "$(http_get_status "$ADMIN" /readyz)" = 000 ] ||
    fail "something already answers on $ADMIN; stop it first (is a 'make run' still running?)"

# Build first, outside the timed wait: `make run`'s own build step is then a no-op.
make build

log="$(mktemp)"
pgid=""
cleanup() {
    status=$?
    if [ -n "$pgid" ] && kill -0 -- "-$pgid" 2>/dev/null; then
        kill -TERM -- "-$pgid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pgid" 2>/dev/null || true
        wait "$pgid" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ]; then
        echo "quickstart: failed; output of 'make run':" >&2
        sed 's/^/  | /' "$log" >&2 || true
    fi
    rm -f "$log"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Job control gives `make run` (and the proxyd it starts) a process group of its own.
set -m
make run >"$log" 2>&1 &
pgid=$!
set +m

deadline=$((SECONDS + READY_WITHIN))
until [ "$(http_get_status "$ADMIN" /readyz)" = 200 ]; do
    kill -0 "$pgid" 2>/dev/null || fail "'make run' exited before $ADMIN/readyz answered"
    [ "$SECONDS" -lt "$deadline" ] || fail "$ADMIN/readyz did not answer 200 within ${READY_WITHIN}s"
    sleep 0.5
done
echo "quickstart: 'make run' is ready ($ADMIN/readyz: 200)"

status="$(connect_status "$PROXY" 127.0.0.1:22)"
[ "$status" = 403 ] || fail "CONNECT 127.0.0.1:22 through $PROXY answered '$status', expected 403"
echo "quickstart: CONNECT 127.0.0.1:22 through $PROXY refused with 403"
echo "quickstart: ok"
