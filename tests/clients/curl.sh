#!/bin/sh
# The real-client suite's curl client (tests/e2e/clients.rs).
# Usage: curl.sh PROXY_URL TARGET_URL CA_FILE [USER PASSWORD]
# Prints `status=CODE body=FIRST-LINE` when the origin answered, else
# `error=...` with the proxy's CONNECT status; exits 0 only for the origin.
# Credentials: --proxy-user (curl sends them with the CONNECT, Basic by default).
proxy=$1 url=$2 ca=$3
set -- --silent --show-error --max-time 15 --noproxy '' --cacert "$ca" --proxy "$proxy" ${4:+--proxy-user "$4:$5"}
body=$(mktemp) || exit 2
trap 'rm -f "$body"' EXIT
codes=$(curl "$@" --output "$body" --write-out '%{http_code} %{http_connect}' "$url" 2>/dev/null)
rc=$?
set -- $codes
if [ "$rc" -eq 0 ]; then
    echo "status=$1 body=$(head -n 1 "$body")"
else
    echo "error=curl exit $rc, proxy answered the CONNECT with $2"
    exit 1
fi
