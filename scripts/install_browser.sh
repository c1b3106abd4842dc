#!/usr/bin/env bash
# Install the system Chromium used by tests/test_serve_browser.py (Debian packages chromium + chromium-driver).
# Playwright drives it through executable_path; no browser is ever downloaded by Playwright.
# Needs root (or passwordless sudo). Does nothing when chromium is already installed.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install_browser.sh: need root or passwordless sudo to apt-get install chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "install_browser.sh: apt-get not found (this script targets Debian/Ubuntu)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
/usr/bin/chromium --version
