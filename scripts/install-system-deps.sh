#!/usr/bin/env bash
# Debian packages that the tests run for real: Prometheus (tests/service/test_prometheus_live.py)
# and headless Chromium with its WebDriver (tests/service/page/). Skipped when already present.
set -euo pipefail

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
sudo=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "[bootstrap] apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The package starts a system Prometheus on :9090 where an init system runs; tests start their own.
"${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
