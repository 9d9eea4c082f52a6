"""The full Swin-T/ADE architecture (42 M parameters, 150 labels, 100 queries) exports and
verifies at 512x512. About two minutes on 2 cores: run with MASKSERVE_SLOW=1."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskserve.bundle import Bundle
from tests.conftest import run_cli


@pytest.mark.slow
def test_swin_tiny_ade_exports_and_verifies(tmp_path: Path) -> None:
    from bench.checkpoints import save_swin_tiny_ade

    checkpoint = save_swin_tiny_ade(tmp_path / "swin-tiny-ade")
    result = run_cli("export", "--model", str(checkpoint), "--out", str(tmp_path / "bundle"), timeout=1800)
    assert result.returncode == 0, result.stderr
    manifest = Bundle.load(tmp_path / "bundle").manifest
    assert manifest.canvas.hw == (512, 512) and manifest.num_queries == 100 and len(manifest.labels) == 150
    assert manifest.verification is not None and manifest.verification["passed"]
    assert manifest.verification["worst"]["class_logits.max_abs_error"] <= 1e-4
    assert manifest.verification["worst"]["mask_logits.max_abs_error"] <= 1e-4
