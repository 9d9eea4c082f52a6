"""The Dockerfiles: lint (hadolint), policy (checkov), what goes into the build context, and a
simulation of the builder stage (the wheel it builds carries the demo bundle, and no torch)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.deploy import dockerfile
from tests.deploy.tools import DOCKERFILES, IMAGE_UID, ROOT, assert_checkov_clean, checkov, output, run, tool


def test_hadolint_passes() -> None:
    result = run([tool("hadolint"), "--no-color", "--failure-threshold", "style", *map(str, DOCKERFILES.values())])
    assert result.returncode == 0, output(result)


def test_checkov_dockerfiles() -> None:
    args = ["--framework", "dockerfile"]
    for path in DOCKERFILES.values():
        args += ["-f", str(path)]
    assert_checkov_clean(checkov(args))


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_runtime_stage_contract(flavour: str) -> None:
    stages = dockerfile.parse(DOCKERFILES[flavour])
    runtime = stages[-1]
    assert runtime.name == "runtime"
    for candidate in stages:
        assert ":" in candidate.base or candidate.base in {s.name for s in stages}, candidate.base
        assert not candidate.base.endswith(":latest"), candidate.base
    env = runtime.env()
    assert env["MASKSERVE_HOST"] == "0.0.0.0"
    assert runtime.all("EXPOSE") == [env["MASKSERVE_PORT"]]
    assert runtime.last("USER") == f"{IMAGE_UID}:{IMAGE_UID}"
    assert runtime.command() == ["maskserve", "serve"]
    _, check = runtime.healthcheck()
    assert "/readyz" in " ".join(check)
    if flavour == "gpu":
        assert env["MASKSERVE_BACKEND"] == "auto"
        assert env["MASKSERVE_ENGINE_CACHE"] in " ".join(runtime.all("VOLUME"))


EXTRAS = {"cpu": {"cpu"}, "gpu": {"gpu", "tensorrt"}}


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_install_layer_uses_one_onnxruntime(flavour: str) -> None:
    """The image installs its wheel with the extras for its flavour; the requirements those
    extras add (from pyproject.toml, as pip reads them) hold one ONNX Runtime and no torch."""
    (layer,) = [
        r for r in dockerfile.stage(dockerfile.parse(DOCKERFILES[flavour]), "builder").all("RUN") if "pip install" in r
    ]
    match = re.search(r"maskserve-\*\.whl\)\[([\w,]+)\]", layer)
    assert match, layer
    extras = set(match.group(1).split(","))
    assert extras == EXTRAS[flavour]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    wanted = [*project["dependencies"], *(r for extra in sorted(extras) for r in optional[extra])]
    names = [re.match(r"[\w.-]+", requirement).group().lower() for requirement in wanted]  # type: ignore[union-attr]
    assert "fastapi" in names and "uvicorn" in names
    assert not {"torch", "transformers"} & set(names), names
    runtimes = [name for name in names if name.startswith("onnxruntime")]
    assert runtimes == (["onnxruntime-gpu"] if flavour == "gpu" else ["onnxruntime"]), runtimes
    assert ("tensorrt" in names) == (flavour == "gpu")


def test_no_onnxruntime_in_the_base_requirements() -> None:
    """``onnxruntime`` and ``onnxruntime-gpu`` both provide the ``onnxruntime`` module; a base
    requirement on one would overwrite the other in every GPU install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = [re.match(r"[\w.-]+", r).group().lower() for r in project["dependencies"]]  # type: ignore[union-attr]
    assert not [name for name in base if name.startswith("onnxruntime")], base
    extras = project["optional-dependencies"]
    assert not any(r.startswith("onnxruntime-gpu") for r in extras["cpu"])
    assert not any(r.startswith("onnxruntime") and not r.startswith("onnxruntime-gpu") for r in extras["gpu"])


@pytest.mark.parametrize(
    ("path", "included"),
    [
        ("pyproject.toml", True),
        ("README.md", True),
        ("maskserve/bundle.py", True),
        ("maskserve/assets/shapes/bundle.json", True),
        ("maskserve/assets/shapes/model.onnx", True),
        ("service/settings.py", True),
        ("export/cli.py", True),
        ("model/fused_head.py", True),
        ("service/__pycache__/settings.cpython-311.pyc", False),
        ("model/checkpoints/shapes.safetensors", False),
        ("export/out/model.onnx", False),
        ("tests/conftest.py", False),
        ("docs/deploy.md", False),
        (".git/HEAD", False),
        (".venv/bin/python", False),
        (".tools/bin/checkov", False),
        (".cache/demo/model.onnx", False),
        ("k8s/base/deployment.yaml", False),
        ("maskserve.egg-info/PKG-INFO", False),
    ],
)
def test_build_context(path: str, included: bool) -> None:
    assert dockerfile.DockerIgnore(ROOT / ".dockerignore").included(path) is included


def test_builder_stage_builds_a_serving_wheel_with_the_demo_bundle(tmp_path: Path) -> None:
    """Replays the CPU builder stage without Docker: the build context (after .dockerignore), its
    COPY lines, ``pip wheel .``; then checks the wheel as the image's build-time checks would."""
    ignore = dockerfile.DockerIgnore(ROOT / ".dockerignore")
    context = tmp_path / "src"
    for source in dockerfile.stage(dockerfile.parse(DOCKERFILES["cpu"]), "builder").copy_sources():
        origin = ROOT / source
        files = [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
        copied = [f for f in files if ignore.included(f.relative_to(ROOT).as_posix())]
        assert copied, f"COPY {source}: nothing in the build context (missing, or excluded by .dockerignore)"
        for file in copied:
            target = context / file.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)

    wheels = tmp_path / "wheels"
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
            str(wheels),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = wheels.glob("maskserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    for name in ("bundle.json", "model.onnx"):
        assert f"maskserve/assets/shapes/{name}" in names, (
            f"the wheel lacks maskserve/assets/shapes/{name}: the image would have no demo bundle "
            "(package data: [tool.setuptools.package-data] maskserve = ['assets/**/*'])"
        )
    assert {"maskserve/service/app.py", "maskserve/export/cli.py"} <= names
    base_requirements = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    heavy = [r for r in base_requirements if re.match(r"[\w.-]+", r).group().lower() in {"torch", "transformers"}]
    assert not heavy, f"serving install pulls {heavy}"


@pytest.mark.skipif(
    os.environ.get("MASKSERVE_BUILD_IMAGES") != "1" or shutil.which("nvidia-smi") is None,
    reason="building the GPU image needs a Docker engine with BuildKit, network access and an NVIDIA "
    "GPU to try it on: set MASKSERVE_BUILD_IMAGES=1 on such a machine",
)
def test_gpu_image_builds_and_sees_cuda() -> None:
    build = run(["docker", "build", "-f", str(DOCKERFILES["gpu"]), "-t", "maskserve:test-gpu", "."], timeout=3600)
    assert build.returncode == 0, output(build)
    probe = run(
        [
            "docker",
            "run",
            "--rm",
            "--gpus",
            "1",
            "--entrypoint",
            "python",
            "maskserve:test-gpu",
            "-c",
            "import onnxruntime as o, tensorrt; print(o.get_device())",
        ],
        timeout=600,
    )
    assert probe.returncode == 0 and "GPU" in probe.stdout, output(probe)
