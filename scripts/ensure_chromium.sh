#!/usr/bin/env bash
# Installs Debian's chromium (headless browser for tests/report/test_report_html.py) when it is missing.
# Called by `make test`; needs root (CI and the dev machines run as root). Quiet unless it fails.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ensure_chromium: /usr/bin/chromium is missing and installing it needs root: apt-get install chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "ensure_chromium: could not install chromium with apt-get (output above)" >&2
    exit 1
fi
rm -f "$log"
test -x /usr/bin/chromium
