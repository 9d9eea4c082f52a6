"""Every module imports the product through its one root, ``maskserve``.

The repository's ``service/``, ``model/`` and ``export/`` folders are installed as
``maskserve.service``, ``maskserve.model`` and ``maskserve.export``; importing them by their
folder names works only by accident inside a checkout (and picks up a user's own ``model.py``).
ruff's banned-api rule cannot refuse the bare names everywhere while letting the exporter import
torch, so this test does it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("maskserve", "service", "model", "export", "demo", "bench", "tests", "scripts")
BARE = {"service", "model", "export"}


def _python_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _bare_imports(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.relative_to(root)}:{node.lineno}: {name}" for name in names if name.split(".")[0] in BARE]
    return found


def test_no_module_imports_a_folder_name() -> None:
    files = _python_files()
    assert len(files) > 50, "the scan found too few files to mean anything"
    offenders = [line for path in files for line in _bare_imports(path)]
    assert not offenders, "import through maskserve.*:\n" + "\n".join(offenders)


def test_the_scan_catches_a_bare_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom service.api import router\nimport model.wrapper as w\nfrom maskserve import x\n")
    assert [line.split(": ")[1] for line in _bare_imports(sample, tmp_path)] == ["service.api", "model.wrapper"]


def test_every_mapped_folder_is_a_listed_package() -> None:
    """A new subpackage (a folder with ``__init__.py``) must be listed in pyproject's
    ``packages``, or the wheel silently leaves it out."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, mapping = set(setuptools["packages"]), setuptools["package-dir"]
    expected = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            if package == "maskserve" and relative:  # the root's own subfolders are data (assets)
                continue
            expected.add(".".join((package, *relative)))
    assert expected == listed, f"missing: {sorted(expected - listed)}, stale: {sorted(listed - expected)}"


@pytest.mark.parametrize("name", sorted(BARE))
def test_maskserve_subpackages_import_from_the_folders(name: str) -> None:
    code = f"import maskserve.{name} as m; print(m.__file__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd="/")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == ROOT / name
