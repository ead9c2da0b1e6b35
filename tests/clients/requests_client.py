"""The real-client suite's Python requests client (tests/e2e/clients.rs).

Usage: python3 requests_client.py PROXY_URL TARGET_URL CA_FILE [USER PASSWORD]
Prints `status=CODE body=FIRST-LINE` when the origin answered, else
`error=...`; exits 0 only for the origin. Credentials: in the proxy URL
(requests sends them with the CONNECT).
"""

import sys
import urllib.parse

import requests


def main():
    proxy, url, ca = sys.argv[1:4]
    if len(sys.argv) > 5:
        parts = urllib.parse.urlsplit(proxy)
        user = urllib.parse.quote(sys.argv[4], safe="")
        password = urllib.parse.quote(sys.argv[5], safe="")
        proxy = parts._replace(netloc=f"{user}:{password}@{parts.netloc}").geturl()
    session = requests.Session()
    session.trust_env = False  # never the environment's proxies or CA bundle
    try:
        response = session.get(url, proxies={"https": proxy}, verify=ca, timeout=15)
    except requests.RequestException as error:
        print(f"error={type(error).__name__}: {error}")
        return 1
    first = response.text.splitlines()[0] if response.text else ""
    print(f"status={response.status_code} body={first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
