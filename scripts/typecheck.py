"""Type-check the package under its import names, as the wheel lays it out.

The package maps repository folders into one import root (``pyproject.toml``
``[tool.setuptools.package-dir]``: ``service/`` is ``maskserve.service``, ...). mypy resolves
modules by directory and does not run setuptools' editable-install import hook, so this builds
a tree of symlinks with the installed layout under ``.cache/typecheck/`` and runs mypy on it
(mypy's messages name the paths inside that tree).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".cache" / "typecheck"
# Repo tools type-checked beside the package: folders or single files (with their packages'
# __init__.py). Not all of bench/: its older modules predate the check.
TOOLS = (
    "demo",
    "bench/trained_like.py",
    "bench/checkpoints.py",
    "bench/gpu",
    "bench/region_masks.py",
    "bench/workload.py",
    "bench/variants.py",
    "bench/machine.py",
    "bench/flops.py",
    "bench/accuracy.py",
    "bench/model_level.py",
    "bench/service_level.py",
    "bench/report.py",
    "bench/targets.py",
    "bench/__main__.py",
)


def link_tree(source: Path, target: Path) -> None:
    """Mirror ``source``'s Python files into ``target`` as symlinks (directories are real)."""
    for path in source.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        link = target / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)


def main() -> int:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    for package, folder in sorted(mapping.items()):
        target = TREE.joinpath(*package.split("."))
        if package == "maskserve":  # the root holds only its own files; the rest map below it
            for path in (ROOT / folder).glob("*.py"):
                target.mkdir(parents=True, exist_ok=True)
                (target / path.name).symlink_to(path)
        else:
            link_tree(ROOT / folder, target)
    for tool in TOOLS:
        if (ROOT / tool).is_dir():
            link_tree(ROOT / tool, TREE / tool)
        # A single file, or a folder inside a package: the packages' __init__.py files above it.
        for source in [ROOT / tool, *(ROOT / parent / "__init__.py" for parent in Path(tool).parents[:-1])]:
            link = TREE / source.relative_to(ROOT)
            if source.is_file() and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source)
    targets = [str(TREE / "maskserve"), *(str(TREE / tool) for tool in TOOLS)]
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *targets]
    return subprocess.call(command, cwd=TREE, env={**os.environ, "MYPYPATH": str(TREE)})


if __name__ == "__main__":
    sys.exit(main())
