#!/usr/bin/env bash
# Debian's chromium for the report's browser test (tests/test_report_browser.py, driven by playwright's
# Python API with executable_path=/usr/bin/chromium; playwright never downloads a browser here).
# Idempotent: returns at once when chromium is already installed. Needs root (or password-less sudo) to
# install; without either it says so, and under CI=true it fails, because the test must not be skipped there.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install_browser.sh: $CHROMIUM is missing and installing it needs root: run 'apt-get install -y chromium'" >&2
    if [ "${CI:-}" = "true" ]; then exit 1; fi
    echo "install_browser.sh: the browser test will be skipped" >&2
    exit 0
fi

echo "install_browser.sh: installing Debian's chromium (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q >/dev/null
"${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null
test -x "$CHROMIUM"
