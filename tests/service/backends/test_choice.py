"""Which backend runs a bundle here, and what is said when none can."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskserve.service.backends import BackendError, choose_backend, onnxruntime_on_cpu, tensorrt_installed
from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("requested", "installed", "gpus", "expected"),
    [
        ("auto", False, 0, "onnxruntime"),
        ("auto", True, 0, "onnxruntime"),
        ("auto", True, 1, "tensorrt"),
        ("onnxruntime", True, 1, "onnxruntime"),
        ("tensorrt", True, 2, "tensorrt"),
        ("tensorrt", False, 0, "needs the tensorrt"),
        ("tensorrt", True, 0, "needs a CUDA GPU"),
    ],
)
def test_backend_choice(requested: str, installed: bool, gpus: int, expected: str) -> None:
    if expected.startswith("needs"):
        with pytest.raises(BackendError, match=expected):
            choose_backend(requested, installed, gpus)
    else:
        assert choose_backend(requested, installed, gpus) == expected


def test_int8_bundles_stay_on_onnxruntime() -> None:
    assert choose_backend("auto", True, 1, "int8") == "onnxruntime"
    with pytest.raises(BackendError, match="fp32 bundle"):
        choose_backend("tensorrt", True, 1, "int8")


def test_build_engine_without_tensorrt_is_a_clean_error(swin_bundle: Path) -> None:
    if tensorrt_installed():
        pytest.skip("tensorrt is installed here; the GPU tests cover the build")
    result = run_cli("build-engine", "--bundle", str(swin_bundle), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: backend 'tensorrt' needs the tensorrt and cuda-python packages: pip install 'maskserve[gpu,tensorrt]'"
    ]


@pytest.mark.parametrize(
    ("requested", "precision", "openvino", "cpu_only", "gpus", "expected"),
    [
        ("auto", "bf16", True, True, 0, "openvino"),
        ("auto", "fp32", True, True, 0, "onnxruntime"),  # 5% is not worth a change of runtime
        ("auto", "int8", True, True, 0, "onnxruntime"),  # slower there
        ("auto", "bf16", True, False, 0, "onnxruntime"),  # ONNX Runtime has a GPU provider here
        ("auto", "bf16", True, True, 1, "tensorrt"),
        ("auto", "bf16", False, True, 0, "onnxruntime"),
        ("openvino", "fp32", True, True, 0, "openvino"),
        ("openvino", "int8", True, False, 0, "openvino"),
        ("onnxruntime", "bf16", True, True, 0, "onnxruntime"),
        ("openvino", "fp32", False, True, 0, "needs the openvino package"),
    ],
)
def test_openvino_choice(
    requested: str, precision: str, openvino: bool, cpu_only: bool, gpus: int, expected: str
) -> None:
    choose = lambda: choose_backend(requested, gpus > 0, gpus, precision, openvino, cpu_only)  # noqa: E731
    if expected.startswith("needs"):
        with pytest.raises(BackendError, match=expected) as raised:
            choose()
        assert "pip install 'maskserve[cpu,openvino]'" in str(raised.value)
    else:
        assert choose() == expected


def test_onnxruntime_on_cpu() -> None:
    assert onnxruntime_on_cpu("cpu") and not onnxruntime_on_cpu("cuda") and not onnxruntime_on_cpu("tensorrt")


def test_onnxruntime_builds_in_separate_directories_are_no_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU build in site-packages and onnxruntime-gpu in a --target directory ahead of it on
    the path: the GPU one is imported whole. Both in one directory overwrite each other."""
    import importlib
    import sys

    from maskserve.service.backends import onnxruntime_problem

    target = tmp_path / "site"
    (target / "onnxruntime").mkdir(parents=True)
    (target / "onnxruntime" / "__init__.py").write_text("")
    (target / "onnxruntime_gpu-1.31.1.dist-info").mkdir()
    (target / "onnxruntime_gpu-1.31.1.dist-info" / "METADATA").write_text("Name: onnxruntime-gpu\nVersion: 1.31.1\n")
    monkeypatch.syspath_prepend(str(target))
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    importlib.invalidate_caches()
    onnxruntime_problem.cache_clear()
    assert onnxruntime_problem() is None
    (target / "onnxruntime-1.30.0.dist-info").mkdir()
    (target / "onnxruntime-1.30.0.dist-info" / "METADATA").write_text("Name: onnxruntime\nVersion: 1.30.0\n")
    onnxruntime_problem.cache_clear()
    assert "overwrite each other" in (onnxruntime_problem() or "")
    onnxruntime_problem.cache_clear()
