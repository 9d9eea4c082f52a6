"""Which canvases take which Swin branches: the trace canvas, the extra verification canvas, and
the canvases a graph traced without the patch cannot serve."""

from __future__ import annotations

import pytest
from transformers import MaskFormerConfig, ResNetConfig, SwinConfig

from maskserve.bundle import Canvas
from maskserve.export import pipeline
from maskserve.export.errors import ExportError
from maskserve.export.shape_branches import SwinGeometry, extra_canvas, trace_canvas
from tests.checkpoints import STAGES


def _canvas(text: str) -> Canvas:
    return Canvas.parse(text)


def _geometry(window: int, patch: int = 4) -> SwinGeometry:
    config = MaskFormerConfig(
        backbone_config=SwinConfig(window_size=window, patch_size=patch, depths=[1, 1, 1, 1], out_features=STAGES)
    )
    geometry = SwinGeometry.of(config)
    assert geometry is not None
    return geometry


@pytest.mark.parametrize(
    ("window", "canvas", "crop"),
    [
        (7, "224x224", (False, False, False, False)),  # the Swin-T/S pretraining size: the trap
        (7, "448x448", (False, False, False, False)),
        (7, "512x512", (True, True, True, True)),
        (12, "384x384", (False, False, False, False)),  # the Swin-B/L pretraining size
        (12, "768x768", (False, False, False, False)),
        (12, "192x192", (False, False, False, True)),
        (12, "480x640", (True, True, True, True)),  # H alone leaves stages 1-2 unpadded; W pads them
        (4, "128x128", (False, False, False, False)),  # issue 11's checkpoint
        (4, "160x160", (False, False, True, True)),
    ],
)
def test_which_stages_pad(window: int, canvas: str, crop: tuple[bool, ...]) -> None:
    branches = _geometry(window).branches(_canvas(canvas))
    assert branches.crop == crop
    assert branches.embedding == (False, False) and not any(branches.merging)  # patch 4, multiples of 32


def test_window_4_stages_1_and_2_never_pad() -> None:
    assert _geometry(4).stages_that_can_pad() == (False, False, True, True)
    assert _geometry(7).stages_that_can_pad() == (True, True, True, True)


@pytest.mark.parametrize(
    ("window", "default", "trace"),
    [(7, "224x224", "192x224"), (12, "384x384", "352x384"), (4, "128x128", "96x128"), (7, "512x512", "512x512")],
)
def test_the_trace_canvas_makes_every_stage_pad(window: int, default: str, trace: str) -> None:
    geometry = _geometry(window)
    chosen = trace_canvas(geometry, _canvas(default))
    assert chosen == _canvas(trace) and geometry.is_general(chosen)
    assert trace_canvas(None, _canvas(default)) == _canvas(default)  # ResNet: no branches, no change


def test_the_extra_canvas_differs_most_from_the_trace() -> None:
    geometry = _geometry(12)
    assert extra_canvas(geometry, _canvas("512x512"), [_canvas("512x512")]) == _canvas("384x384")  # no stage pads
    declared = [_canvas("512x512"), _canvas("384x384")]  # taken: the next best leaves three stages unpadded
    assert extra_canvas(geometry, _canvas("512x512"), declared) == _canvas("192x192")
    assert extra_canvas(None, _canvas("512x512"), declared) == _canvas("576x448")  # 64 px taller, narrower
    assert extra_canvas(None, _canvas("128x128"), [_canvas("128x128"), _canvas("192x64")]) == _canvas("224x64")


def test_unpatched_graphs_refuse_canvases_on_the_other_side_of_a_branch() -> None:
    # Patch size 6 does not divide 32: whether the image is padded to the patch depends on the canvas.
    geometry = _geometry(7, patch=6)
    trace = trace_canvas(geometry, _canvas("224x224"))
    assert geometry.unservable(trace, trace) is None
    other = next(
        _canvas(f"{h}x{h}")
        for h in range(64, 1024, 32)
        if geometry.branches(_canvas(f"{h}x{h}")).embedding != geometry.branches(trace).embedding
    )
    assert "patch embedding" in (geometry.unservable(trace, other) or "")
    # A stage traced unpadded lacks its crop wherever it pads; traced padded, it crops everywhere.
    window4 = _geometry(4)
    assert "stage 3 pads there" in (window4.unservable(_canvas("128x128"), _canvas("160x160")) or "")
    assert window4.unservable(_canvas("160x160"), _canvas("128x128")) is None


def test_without_the_patch_the_export_refuses_what_it_cannot_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "patch_problem", lambda: "MaskFormerSwinLayer.forward changed")
    config = MaskFormerConfig(
        backbone_config=SwinConfig(window_size=7, patch_size=6, depths=[1, 1, 1, 1], out_features=STAGES)
    )
    geometry = SwinGeometry.of(config)
    assert geometry is not None
    trace = trace_canvas(geometry, _canvas("224x224"))
    served = [c for c in (_canvas(f"{h}x{h}") for h in range(64, 1024, 32)) if geometry.unservable(trace, c) is None]
    refused = next(c for c in (_canvas(f"{h}x{h}") for h in range(64, 1024, 32)) if c not in served)
    plan = pipeline.plan_trace(config, [_canvas("224x224"), *served[:2]])
    assert plan.trace == trace and not plan.patched
    reason = geometry.unservable(trace, refused)
    assert reason is not None
    with pytest.raises(ExportError) as raised:
        pipeline.plan_trace(config, [_canvas("224x224"), refused])
    assert str(raised.value) == f"canvas {refused} cannot be served by the unpatched graph: {reason}"
    resnet = MaskFormerConfig(backbone_config=ResNetConfig(out_features=STAGES))
    assert pipeline.plan_trace(resnet, [_canvas("224x224")]).geometry is None
