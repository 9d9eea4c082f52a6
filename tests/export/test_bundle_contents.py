"""A bundle exported through the CLI: valid manifest, verified, loadable by plain onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from maskserve.bundle import INPUTS, OUTPUTS, Bundle, Canvas
from maskserve.export.onnx_export import sample_inputs
from maskserve.export.verify import verify
from tests.checkpoints import LABELS, THING_IDS, tiny_model


@pytest.mark.parametrize("backbone", ["swin", "resnet"])
def test_manifest(bundle_factory, backbone: str) -> None:
    bundle = Bundle.load(bundle_factory(backbone))
    m = bundle.manifest
    assert [label.name for label in m.labels] == list(LABELS.values())
    assert [label.id for label in m.labels if label.isthing] == THING_IDS
    assert m.canvas == Canvas(height=128, width=128)  # from the checkpoint's preprocessor config
    assert [str(c) for c in m.canvases] == ["128x128", "128x192", "192x128"]
    assert m.default_task == "panoptic" and m.num_queries == 10 and m.max_batch == 8
    assert m.source.backbone in {"maskformer-swin", "swin", "resnet"}
    assert len(m.source.sha256) == 64
    assert m.verification is not None and m.verification["passed"] is True
    # every declared canvas, plus one the user did not ask for (for the window-7 Swin, one where no stage pads)
    extra = {"swin": "224x224", "resnet": "192x64"}[backbone]
    assert m.verification["cases"] == ["128x128", "128x192", "192x128", extra]
    assert m.verification["traced_at"] == "128x128"
    assert m.verification["swin_patch"] is {"swin": True, "resnet": None}[backbone]
    worst = m.verification["worst"]
    assert worst["class_logits.max_abs_error"] <= 1e-4 and worst["mask_logits.max_abs_error"] <= 1e-4
    assert m.normalization.mean == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.parametrize("backbone", ["swin", "resnet"])
def test_plain_onnxruntime_runs_it_at_several_shapes(bundle_factory, backbone: str) -> None:
    session = ort.InferenceSession(
        str(Bundle.load(bundle_factory(backbone)).model_path), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == list(INPUTS)
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS)
    for batch, canvas in [
        (1, Canvas(height=128, width=128)),
        (3, Canvas(height=64, width=224)),
        (8, Canvas(height=32, width=32)),
    ]:
        feeds = {name: t.numpy() for name, t in zip(INPUTS, sample_inputs(batch, canvas), strict=True)}
        out = dict(zip(OUTPUTS, session.run(None, feeds), strict=True))
        assert out["semantic_map"].shape == (batch, canvas.height, canvas.width)
        assert out["semantic_map"].dtype == np.int32
        assert out["instance_masks"].shape == (batch, 10, canvas.height // 4, canvas.width // 4)
        assert out["instance_masks"].dtype == np.uint8


def test_verification_catches_a_wrong_graph(bundle_factory) -> None:
    """The swin graph checked against a differently seeded model must fail, with a table."""
    other = tiny_model("swin", seed=123)
    report = verify(Bundle.load(bundle_factory("swin")).model_path, other, [Canvas(height=64, width=64)], "fp32")
    assert not report.ok
    failing = {c.output for c in report.checks if not c.ok}
    assert {"class_logits", "mask_logits"} <= failing
    assert "NO" in report.table()


def test_no_bundle_when_staging_fails(tmp_path: Path) -> None:
    from maskserve.export.writer import staged_bundle

    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError), staged_bundle(out, force=False) as staging:
        (staging / "model.onnx").write_bytes(b"half")
        raise RuntimeError("verification failed")
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_atomically(tmp_path: Path) -> None:
    from maskserve.export.writer import staged_bundle

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_bundle(out, force=True) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert list(tmp_path.iterdir()) == [out]
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)


def test_torch_reference_inputs_are_deterministic() -> None:
    a = sample_inputs(2, Canvas(height=64, width=64), seed=3)
    b = sample_inputs(2, Canvas(height=64, width=64), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
