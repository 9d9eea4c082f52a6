"""The precision the server serves: /v1/model, the info metric, and bf16 bundles where bf16 cannot run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from maskserve.bundle import Bundle
from maskserve.service.app import create_app
from maskserve.service.backends import BackendError
from maskserve.service.precision import cpu_flags, cpu_has_bf16, served_precision
from maskserve.service.settings import Settings
from tests.conftest import run_cli
from tests.service.server import running_server

# Excerpts of real /proc/cpuinfo flag lines: an AVX2-only Skylake client, a Zen 4, a Sapphire Rapids.
NO_BF16 = frozenset(["fpu", "sse", "sse2", "avx", "avx2", "fma", "f16c", "bmi2"])
AVX512_BF16 = frozenset(["fpu", "sse", "sse2", "avx", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"])
AMX = frozenset(["avx512f", "amx_tile", "amx_int8", "amx_bf16"])


def bf16_bundle(fp32_bundle: Path, directory: Path) -> Path:
    """A bf16 bundle is an fp32 bundle's graph whose bundle.json says bf16 (what --precision bf16
    writes, short of its accuracy report)."""
    out = directory / "bf16"
    shutil.copytree(fp32_bundle, out)
    manifest = json.loads((out / "bundle.json").read_text())
    manifest["precision"] = "bf16"
    (out / "bundle.json").write_text(json.dumps(manifest))
    assert Bundle.load(out).manifest.precision == "bf16"
    return out


def test_cpu_flags_come_from_the_first_processor(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert cpu_has_bf16(AVX512_BF16) and cpu_has_bf16(AMX) and not cpu_has_bf16(NO_BF16)


def test_only_bf16_bundles_depend_on_the_cpu() -> None:
    for precision in ("fp32", "fp16", "int8"):
        assert served_precision(precision, "onnxruntime", NO_BF16, "refuse") == precision
    assert served_precision("bf16", "onnxruntime", NO_BF16, "fp32") == "fp32"
    with pytest.raises(BackendError, match="no bfloat16 instructions"):
        served_precision("bf16", "onnxruntime", NO_BF16, "refuse")
    # A bf16 CPU is not enough: ONNX Runtime has no x86 bfloat16 kernels.
    with pytest.raises(BackendError, match="onnxruntime backend has no bfloat16 kernels"):
        served_precision("bf16", "onnxruntime", AVX512_BF16, "refuse")


def test_a_bf16_bundle_is_refused_on_a_cpu_without_bf16(tmp_path: Path, resnet_bundle: Path) -> None:
    bundle = bf16_bundle(resnet_bundle, tmp_path)
    with pytest.raises(BackendError) as refused:
        create_app(Settings(bundle=bundle), cpu_flags=NO_BF16)
    message = str(refused.value)
    assert "\n" not in message and "avx512_bf16" in message and "MASKSERVE_PRECISION_FALLBACK=fp32" in message


def test_serve_refuses_a_bf16_bundle_in_one_line(
    tmp_path: Path, resnet_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever this CPU has, the onnxruntime backend cannot run bf16: one line, exit 2. (Where
    # openvino is installed, auto would take it for a bf16 bundle: tests/service/backends/test_ov.py.)
    monkeypatch.setenv("MASKSERVE_BACKEND", "onnxruntime")
    result = run_cli("serve", "--bundle", str(bf16_bundle(resnet_bundle, tmp_path)), timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: a bf16 bundle cannot be served in bf16 here"), lines


def test_fallback_serves_fp32_and_says_so(
    tmp_path: Path, resnet_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = bf16_bundle(resnet_bundle, tmp_path)
    with running_server(bundle, cpu_flags=NO_BF16, precision_fallback="fp32", warmup=False) as (url, _):
        model = httpx.get(f"{url}/v1/model").json()
        assert (model["precision"], model["bundle_precision"]) == ("fp32", "bf16")
        metrics = httpx.get(f"{url}/metrics").text
    assert 'bundle_precision="bf16"' in metrics and 'precision="fp32"' in metrics
    assert "serving the bf16 bundle in fp32: this CPU has no bfloat16 instructions" in caplog.text


def test_model_and_metric_report_the_served_precision(resnet_bundle: Path, tmp_path: Path) -> None:
    with running_server(resnet_bundle, warmup=False) as (url, _):
        model = httpx.get(f"{url}/v1/model").json()
        metrics = httpx.get(f"{url}/metrics").text
    assert (model["precision"], model["bundle_precision"]) == ("fp32", "fp32")
    info = next(line for line in metrics.splitlines() if line.startswith("maskserve_model_info{"))
    assert 'precision="fp32"' in info and 'bundle_precision="fp32"' in info
