#!/bin/sh
# The real-client suite's wget client (tests/e2e/clients.rs).
# Usage: wget.sh PROXY_URL TARGET_URL CA_FILE [USER PASSWORD]
# Prints `status=CODE body=FIRST-LINE` when the origin answered, else
# `error=...` with wget's last messages; exits 0 only for the origin.
# Credentials: --proxy-user/--proxy-password (sent with the CONNECT).
proxy=$1 url=$2 ca=$3
set -- --no-verbose --server-response --tries 1 --timeout 15 --no-config -e use_proxy=on -e "https_proxy=$proxy" \
    --ca-certificate "$ca" ${4:+--proxy-user "$4"} ${4:+--proxy-password "$5"}
body=$(mktemp) || exit 2
log=$(mktemp) || exit 2
trap 'rm -f "$body" "$log"' EXIT
if wget "$@" --output-document "$body" "$url" 2>"$log"; then
    status=$(grep -o 'HTTP/[0-9.]* [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    echo "status=$status body=$(head -n 1 "$body")"
else
    rc=$?
    # wget names the proxy's refusal by its reason phrase: "Proxy tunneling failed: Forbidden".
    echo "error=wget exit $rc: $(grep -v '^ *HTTP/\|^ *[A-Za-z-]*: ' "$log" | tr '\n' ' ')"
    exit 1
fi
