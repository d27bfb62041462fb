#!/usr/bin/env bash
# Headless Chromium renders the dashboard HTML in a test. Install Debian's package when missing
# and we are root (CI, fresh machines); otherwise say what to run.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = "0" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "chromium is missing: run 'sudo apt-get install -y chromium' (the dashboard test needs it)" >&2
  exit 1
fi
