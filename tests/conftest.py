"""Session-wide fixtures: tiny checkpoints and their exported bundles (exports are slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _gpu_ready() -> str | None:
    """None when TensorRT and a CUDA GPU are usable here, else why not."""
    from maskserve.service.backends import tensorrt_installed, visible_gpus

    if not tensorrt_installed():
        return "tensorrt and cuda-python are not installed"
    if visible_gpus() == 0:
        return "no CUDA GPU is visible"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = os.environ.get("MASKSERVE_SLOW") == "1"
    # Markers, not keywords: a parametrized id such as test_overlay[gpu] is a keyword too.
    gpu_missing = _gpu_ready() if any(item.get_closest_marker("gpu") for item in items) else None
    for item in items:
        if item.get_closest_marker("slow") and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: set MASKSERVE_SLOW=1 to run"))
        if item.get_closest_marker("gpu") and gpu_missing:
            item.add_marker(pytest.mark.skip(reason=f"gpu: {gpu_missing}"))


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory):
    from tests.checkpoints import save_tiny_checkpoint

    cache: dict[str, Path] = {}

    def make(backbone: str) -> Path:
        if backbone not in cache:
            cache[backbone] = save_tiny_checkpoint(tmp_path_factory.mktemp(f"ckpt-{backbone}"), backbone)
        return cache[backbone]

    return make


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``maskserve ARGS`` as a user would, in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "maskserve.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory: pytest.TempPathFactory, checkpoint_factory):
    """``make(backbone)`` -> a verified bundle, exported once per session through the CLI."""
    from tests.checkpoints import THING_IDS

    cache: dict[str, Path] = {}

    def make(backbone: str) -> Path:
        if backbone not in cache:
            out = tmp_path_factory.mktemp(f"bundle-{backbone}") / "bundle"
            result = run_cli(
                "export",
                "--model",
                str(checkpoint_factory(backbone)),
                "--out",
                str(out),
                "--thing-ids",
                *map(str, THING_IDS),
                "--canvas",
                "128x192",
                "--canvas",
                "192x128",
            )
            assert result.returncode == 0, result.stderr
            cache[backbone] = out
        return cache[backbone]

    return make


@pytest.fixture(scope="session")
def window4_checkpoint(checkpoint_factory) -> Path:
    """A Swin with 4 x 4 windows: at 128 x 128 no stage pads (the canvas that used to break export)."""
    return checkpoint_factory("swin-window4")


@pytest.fixture(scope="session")
def swin_bundle(bundle_factory) -> Path:
    return bundle_factory("swin")


@pytest.fixture(scope="session")
def resnet_bundle(bundle_factory) -> Path:
    return bundle_factory("resnet")


@pytest.fixture(scope="session")
def demo_bundle_dir() -> Path:
    """The embedded demo bundle that ``maskserve serve`` serves by default."""
    from maskserve.bundle import DEFAULT_BUNDLE

    assert (DEFAULT_BUNDLE / "bundle.json").is_file(), f"the demo bundle is missing from {DEFAULT_BUNDLE}"
    return DEFAULT_BUNDLE


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A fresh export of the demo checkpoint as ``demo.ship`` makes it, verified on the example scenes."""
    from demo.scenes import THING_IDS
    from demo.ship import CHECKPOINT, EXAMPLES

    out = tmp_path_factory.mktemp("demo-export") / "bundle"
    result = run_cli(
        "export", "--model", str(CHECKPOINT), "--out", str(out), "--thing-ids", *map(str, THING_IDS),
        "--canvas", "128x160", "--canvas", "160x128", "--verify-images", str(EXAMPLES),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, result
