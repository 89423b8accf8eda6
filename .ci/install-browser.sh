#!/usr/bin/env bash
# Installs Debian's Chromium for the real-browser report test (tests/test_browser.py).
# Idempotent: does nothing when /usr/bin/chromium already runs. Needs root (or sudo).
set -euo pipefail

if [ -x /usr/bin/chromium ] && /usr/bin/chromium --version >/dev/null 2>&1; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    chromium fonts-dejavu-core
echo "installed: $(/usr/bin/chromium --version 2>/dev/null)"
