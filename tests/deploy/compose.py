"""docker-compose.yml as `docker compose` reads it: override files merged, ${VAR:-default} resolved."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import ROOT

BASE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "docker" / "compose.gpu.yml"
APIKEY_OVERRIDE = ROOT / "docker" / "compose.apikey.yml"
# Sequences that an override replaces instead of extending (compose-spec merge rules).
_REPLACED = {"command", "entrypoint", "test"}


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def environment_dict(environment: list[str] | dict[str, Any] | None) -> dict[str, str | None]:
    """Either compose spelling as {name: value}; a bare name (pass-through from the shell) -> None."""
    if environment is None:
        return {}
    if isinstance(environment, dict):
        return {k: None if v is None else str(v) for k, v in environment.items()}
    pairs = (entry.split("=", 1) if "=" in entry else (entry, None) for entry in environment)
    return dict(pairs)


def merge(base: Any, override: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = merge(base[k], v, k) if k in base else v
        return merged
    if key == "environment":
        env = {**environment_dict(base), **environment_dict(override)}
        return [name if value is None else f"{name}={value}" for name, value in env.items()]
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED:
        return base + [item for item in override if item not in base]
    return override


def merged_gpu() -> dict[str, Any]:
    return merge(load(BASE), load(GPU_OVERRIDE))


def interpolate(value: str, env: dict[str, str]) -> str:
    """``${VAR}``, ``${VAR:-default}`` and ``$VAR`` against env (unset and no default: empty)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        found = env.get(name)
        if default is not None and not found:
            return default
        return found or ""

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", replace, value)
