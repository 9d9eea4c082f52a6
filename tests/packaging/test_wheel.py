"""The built wheel, installed (not editable) into a fresh venv, as a user gets it.

It exposes one import name, ``maskserve``; it carries the demo bundle; and it serves from a
working directory whose own ``model.py``, ``service/`` and ``export/`` would shadow generic
top-level packages (a training repository's usual layout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.server import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
DECOY = 'raise ImportError("the decoy {name} in the working directory was imported")\n'


SOURCES = ("pyproject.toml", "README.md", "maskserve", "service", "model", "export")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the sources: setuptools never prunes ``build/lib``, so a build in the
    checkout could carry a module that was deleted or renamed since."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, source / name)
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("maskserve-*.whl")
    return built


def test_wheel_has_one_top_level_name_and_the_demo_bundle(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"maskserve", next(t for t in top if t.endswith(".dist-info"))}, sorted(top)
    for name in ("bundle.json", "model.onnx"):
        assert f"maskserve/assets/shapes/{name}" in names
    for path in (ROOT / "service" / "page" / "static").iterdir():  # the page's package data
        assert f"maskserve/service/page/static/{path.name}" in names, path
    # Every module of the mapped folders is in the wheel, under the one root.
    for folder in ("service", "model", "export"):
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                assert f"maskserve/{folder}/{path.relative_to(ROOT / folder).as_posix()}" in names, path


def _venv_with(wheel: Path, extras: str, home: Path) -> Path:
    """A new venv with the wheel (and ``extras``) installed as a user installs it."""
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{wheel}{extras}"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return python


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel with its `cpu` extra: the serving install (dependencies from pip's cache)."""
    return _venv_with(wheel, "[cpu]", tmp_path_factory.mktemp("venv") / "venv")


@pytest.fixture
def decoy_cwd(tmp_path: Path) -> Path:
    (tmp_path / "model.py").write_text(DECOY.format(name="model.py"))
    for name in ("service", "export"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(DECOY.format(name=f"{name}/"))
    return tmp_path


def _run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def test_only_maskserve_is_importable_from_the_install(fresh_venv: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util as u, maskserve, maskserve.service.app, maskserve.export.cli;"
        "bare = [m for m in ('service', 'model', 'export', 'demo', 'bench', 'tests') if u.find_spec(m)];"
        "assert not bare, bare;"
        "heavy = [m for m in ('torch', 'transformers') if u.find_spec(m)];"
        "assert not heavy, heavy;"
        "print(maskserve.__file__)"
    )
    result = _run(fresh_venv, code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "site-packages" in result.stdout and str(ROOT) not in result.stdout


def test_cli_parses_from_a_directory_with_decoys(fresh_venv: Path, decoy_cwd: Path) -> None:
    """``python -m`` puts the working directory first on sys.path: the decoys would win over
    generic top-level names. The export subcommand registers without torch, too."""
    result = subprocess.run(
        [str(fresh_venv), "-m", "maskserve.cli", "export", "--help"],
        capture_output=True,
        text=True,
        cwd=decoy_cwd,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--model" in result.stdout


@pytest.fixture
def served(fresh_venv: Path, decoy_cwd: Path) -> Iterator[str]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MASKSERVE_")}
    process = subprocess.Popen(
        [str(fresh_venv), "-m", "maskserve.cli", "serve", "--port", str(port)],
        cwd=decoy_cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, timeout=120)
        except TimeoutError:
            process.kill()
            raise AssertionError(process.communicate()[0]) from None
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_installed_wheel_serves_the_demo_model(served: str) -> None:
    image = (ROOT / "examples" / "scene-1.png").read_bytes()
    response = httpx.post(f"{served}/v1/segment", files={"image": ("scene-1.png", image)}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "shapes" and body["image"] == {"width": 256, "height": 256}
    labels = {segment["label"] for segment in body["segments"]}
    assert {"sky", "ground", "square"} <= labels, labels
    page = httpx.get(f"{served}/", timeout=10)
    assert page.status_code == 200 and 'src="/page/app.js"' in page.text
    assert httpx.get(f"{served}/page/rle.js", timeout=10).status_code == 200


def test_without_an_onnxruntime_extra_serve_says_which_to_install(wheel: Path, tmp_path: Path) -> None:
    python = _venv_with(wheel, "", tmp_path / "venv")
    result = subprocess.run(
        [str(python), "-m", "maskserve.cli", "serve"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,  # not the checkout: `-m` would import its maskserve/ folder instead of the install
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: ONNX Runtime is not installed: pip install 'maskserve[cpu]' (CPUs) or 'maskserve[gpu]' (NVIDIA "
        "GPUs, CUDA execution provider)"
    ]
    code = "from maskserve import Segmenter; Segmenter.load()"
    result = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path
    )
    assert "maskserve[cpu]" in result.stderr.splitlines()[-1]


@pytest.mark.slow
def test_gpu_extra_brings_the_cuda_execution_provider(wheel: Path, tmp_path: Path) -> None:
    """``pip install maskserve[gpu]`` (onnxruntime-gpu with pip's CUDA libraries, about 2 GB)
    yields an ONNX Runtime that has the CUDA provider, and no CPU build beside it. The provider
    list is compiled in, so no GPU is needed to check it."""
    python = _venv_with(wheel, "[gpu]", tmp_path / "venv")
    code = (
        "import importlib.metadata as m, onnxruntime as ort;"
        "print(ort.get_available_providers());"
        "names = {d.metadata['Name'].lower() for d in m.distributions()};"
        "assert 'onnxruntime' not in names, names"
    )
    result = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "CUDAExecutionProvider" in result.stdout
