#!/usr/bin/env bash
# Set up a fresh machine for one of two profiles, idempotently:
#   serve  the serving install (no torch): a venv with `pip install -e .`
#   test   everything the test suite needs: torch (CPU), the export/openvino/dev/test-protocols extras, and the
#          system packages the tests run for real (Prometheus).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${1:-serve}"
venv="${MASKSERVE_VENV:-.venv}"
torch_pin="torch==2.13.0"  # a local CPU wheel here; an open range would pull a multi-GB CUDA build

log() { printf '[bootstrap] %s\n' "$*" >&2; }

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv"
  python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

case "$profile" in
  serve)
    log "installing maskserve with the cpu extra (serving profile: no torch)"
    "${pip[@]}" -e ".[cpu]"
    ;;
  test)
    if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
      log "installing $torch_pin"
      "${pip[@]}" "$torch_pin"
    fi
    log "installing maskserve with the cpu, openvino, export, dev and test-protocols extras"
    "${pip[@]}" -e ".[cpu,openvino,export,dev,test-protocols]"
    scripts/install-system-deps.sh
    scripts/install-tools.sh
    ;;
  *)
    log "unknown profile '$profile' (expected serve or test)"
    exit 2
    ;;
esac
