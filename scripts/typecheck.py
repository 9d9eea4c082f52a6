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
TOOLS = ("demo",)  # repo tools type-checked beside the package


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
        link_tree(ROOT / tool, TREE / tool)
    targets = [str(TREE / "maskserve"), *(str(TREE / tool) for tool in TOOLS)]
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *targets]
    return subprocess.call(command, cwd=TREE, env={**os.environ, "MYPYPATH": str(TREE)})


if __name__ == "__main__":
    sys.exit(main())
