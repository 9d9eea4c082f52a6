"""Which backend runs a bundle here, and what is said when none can."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskserve.service.backends import BackendError, choose_backend, tensorrt_installed
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
