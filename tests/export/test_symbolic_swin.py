"""The export-time Swin patch: eager-identical to stock transformers, scoped, guarded, and what
makes a graph traced where no stage pads correct where stages do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers.models.maskformer import modeling_maskformer_swin as swin

from maskserve.bundle import INPUTS, Canvas
from maskserve.export import symbolic_swin as patch
from maskserve.export.onnx_export import export_onnx, sample_inputs
from maskserve.export.shape_branches import SwinGeometry
from maskserve.model.wrapper import ServingMaskFormer, raw_logits
from tests.checkpoints import STAGES, tiny_model

PATCHED = [(cls, name) for cls, name, _ in patch._SWAPS]


def _swin(window: int, seed: int = 0):
    """A tiny MaskFormer Swin with this window: depth 2 in every stage, so each stage has a shifted block."""
    from transformers import DetrConfig, MaskFormerConfig, MaskFormerForInstanceSegmentation, SwinConfig

    backbone = SwinConfig(
        embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=window, out_features=STAGES
    )
    decoder = DetrConfig(d_model=32, decoder_layers=1, decoder_ffn_dim=32, decoder_attention_heads=2, num_queries=4)
    config = MaskFormerConfig(  # the FPN's GroupNorm has 32 groups: widths of 32
        backbone_config=backbone, decoder_config=decoder, fpn_feature_size=32, mask_feature_size=32, num_labels=3
    )
    torch.manual_seed(seed)
    return MaskFormerForInstanceSegmentation(config).eval()


# Per window: sizes where each stage pads and where it does not (the test checks both occur), and
# sizes that are not multiples of 32 or of the patch size (the patch-embedding and merging pads).
SIZES = {
    4: [(128, 128), (160, 160), (96, 160), (224, 64), (256, 256), (100, 130), (33, 47)],
    7: [(224, 224), (256, 256), (448, 224), (224, 96), (192, 160), (100, 130), (33, 47)],
    12: [(384, 384), (512, 512), (384, 96), (192, 192), (96, 416), (100, 130), (33, 47)],
}


@pytest.mark.parametrize("window", sorted(SIZES))
def test_patched_model_equals_stock_transformers_at_every_size(window: int) -> None:
    model = _swin(window)
    geometry = SwinGeometry.of(model.config)
    assert geometry is not None
    decided = {
        geometry.branches(Canvas(height=h, width=w)).crop for h, w in SIZES[window] if h % 32 == 0 and w % 32 == 0
    }
    for stage, can in enumerate(geometry.stages_that_can_pad()):
        # every stage that can pad is seen padded and unpadded
        assert not can or {crop[stage] for crop in decided} == {True, False}, (window, stage)
    for h, w in SIZES[window]:
        pixels = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        with torch.inference_mode():
            stock = model(pixel_values=pixels)
            with patch.symbolic_swin():
                patched = model(pixel_values=pixels)
        assert torch.equal(stock.masks_queries_logits, patched.masks_queries_logits), (window, h, w)
        assert torch.equal(stock.class_queries_logits, patched.class_queries_logits), (window, h, w)


def test_the_geometry_matches_the_stage_sizes_transformers_computes() -> None:
    model = _swin(7)
    geometry = SwinGeometry.of(model.config)
    assert geometry is not None
    for h, w in [(224, 224), (100, 130), (33, 47), (480, 640)]:
        with torch.inference_mode():
            maps = model.model.pixel_level_module.encoder(torch.zeros(1, 3, h, w)).feature_maps
        assert [tuple(m.shape[-2:]) for m in maps] == list(
            zip(geometry.stage_sides(h, 0), geometry.stage_sides(w, 1), strict=True)
        )


def test_the_patch_is_scoped_and_restored_on_error() -> None:
    originals = {(cls, name): cls.__dict__[name] for cls, name in PATCHED}
    with pytest.raises(RuntimeError, match="boom"), patch.symbolic_swin():
        assert all(cls.__dict__[name] is not originals[(cls, name)] for cls, name in PATCHED)
        raise RuntimeError("boom")
    assert all(cls.__dict__[name] is originals[(cls, name)] for cls, name in PATCHED)
    with patch.symbolic_swin(), patch.symbolic_swin():  # nesting restores too
        pass
    assert all(cls.__dict__[name] is originals[(cls, name)] for cls, name in PATCHED)


def test_the_installed_transformers_has_what_the_patch_needs() -> None:
    assert patch.patch_problem() is None


def test_a_changed_transformers_disables_the_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = dict(patch._EXPECTED)
    expected[(swin.MaskFormerSwinLayer, "forward")] = ("if self.crop_always:",)
    monkeypatch.setattr(patch, "_EXPECTED", expected)
    assert patch.patch_problem() == "MaskFormerSwinLayer.forward changed (no line `if self.crop_always:`)"
    original = swin.MaskFormerSwinLayer.__dict__["maybe_pad"]
    with pytest.raises(patch.SwinPatchUnavailable), patch.symbolic_swin():
        pass
    assert swin.MaskFormerSwinLayer.__dict__["maybe_pad"] is original


def test_a_graph_traced_where_no_stage_pads_is_right_where_stages_pad(tmp_path: Path) -> None:
    """The issue's case: window 4, traced at 128 x 128 (no stage pads). With the patch, ONNX
    Runtime equals stock eager transformers at sizes where stages 3 and 4 pad (160, 192, 224,
    96 x 160) and where none does (128, 256). Without it the graph fails at the padded sizes
    (tests/export/test_verify.py exports it that way through the CLI)."""
    model = tiny_model("swin-window4")
    trace = Canvas(height=128, width=128)
    geometry = SwinGeometry.of(model.config)
    assert geometry is not None and not any(geometry.branches(trace).crop)
    path = tmp_path / "model.onnx"
    with patch.symbolic_swin():
        export_onnx(ServingMaskFormer(model), trace, max_batch=2, opset=18, path=path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    padded = 0
    for h, w in [(128, 128), (160, 160), (192, 192), (224, 224), (96, 160), (256, 256)]:
        canvas = Canvas(height=h, width=w)
        padded += any(geometry.branches(canvas).crop)
        inputs = sample_inputs(2, canvas, seed=h + w)
        got = session.run(["class_logits", "mask_logits"], {n: t.numpy() for n, t in zip(INPUTS, inputs, strict=True)})
        expected = raw_logits(model, inputs.pixel_values)  # stock transformers, unpatched
        for name, ours, theirs in zip(("class", "mask"), got, expected, strict=True):
            np.testing.assert_allclose(
                ours, theirs.numpy(), atol=1e-5 * max(1.0, float(theirs.abs().max())), err_msg=f"{name} {canvas}"
            )
    assert padded == 4
