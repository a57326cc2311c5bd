#!/usr/bin/env bash
# Debian's chromium for the web console's browser tests (tests/ui), installed when it is missing.
# `make browser-deps` and .ci/run call this; the tests skip with a clear message without it.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium: /usr/bin/chromium"
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
$sudo apt-get update
$sudo apt-get install -y chromium
