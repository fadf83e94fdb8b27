#!/usr/bin/env bash
# Make sure Debian's chromium is installed at /usr/bin/chromium, for the browser tests of the web demo
# (Playwright drives it through executable_path; Playwright's own browser download cannot work here).
# Idempotent: does nothing when /usr/bin/chromium already exists.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: /usr/bin/chromium is missing and apt-get is not available; install chromium yourself" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium
test -x /usr/bin/chromium
