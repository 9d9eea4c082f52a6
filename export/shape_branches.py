"""Which of a backbone's Python shape branches each canvas takes, and what follows for an export.

A branch on a symbolic size is decided at the trace canvas and baked into the graph (see
``maskserve.export.symbolic_swin``). ``symbolic_swin`` removes MaskFormer Swin's three; this
module covers what is left to choose:

* the **trace canvas**: one where every Swin stage that can pad at some canvas does pad (in H or
  W), so that a graph traced without the patch still contains the crop (a no-op slice where
  nothing pads). With the patch this is a second line of defence; without it, the only one;
* the **extra verification canvas**, a size the user did not ask for: the one whose branches
  differ most from the trace canvas's (for window 12, a canvas where no stage pads);
* the canvases a graph traced **without** the patch cannot serve: those that take the other
  side of a branch that has no general side (the patch-embedding and patch-merging pads: the
  stock code pads by ``p - w % p`` inside its ``if``, which is wrong where nothing needs padding).

ResNet, the FPN pixel decoder and the DETR decoder have no shape branches
(``SwinGeometry.of`` is None for them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from maskserve.bundle import CANVAS_MULTIPLE, MAX_SIDE, Canvas

_SIDES = range(CANVAS_MULTIPLE, MAX_SIDE + 1, CANVAS_MULTIPLE)


@dataclass(frozen=True)
class Branches:
    """The decisions of every shape branch at one canvas (True: the padding side)."""

    crop: tuple[bool, ...]  # per stage: MaskFormerSwinLayer pads, so forward crops back
    embedding: tuple[bool, bool]  # MaskFormerSwinPatchEmbeddings pads (H, W) to the patch size
    merging: tuple[bool, ...]  # per merge: MaskFormerSwinPatchMerging pads to even sizes

    def differences(self, other: Branches) -> int:
        mine = (*self.crop, *self.embedding, *self.merging)
        theirs = (*other.crop, *other.embedding, *other.merging)
        return sum(a != b for a, b in zip(mine, theirs, strict=True))


@dataclass(frozen=True)
class SwinGeometry:
    """What decides MaskFormer Swin's branches: patch size, window size and number of stages."""

    patch: tuple[int, int]
    window: int
    stages: int

    @classmethod
    def of(cls, config: Any) -> SwinGeometry | None:
        """The geometry of a ``MaskFormerConfig``'s backbone; None when it has no shape branches."""
        backbone = config.backbone_config
        if backbone.model_type not in ("swin", "maskformer-swin"):
            return None
        patch = backbone.patch_size
        patch_hw = (int(patch[0]), int(patch[1])) if isinstance(patch, list | tuple) else (int(patch), int(patch))
        return cls(patch=patch_hw, window=int(backbone.window_size), stages=len(backbone.depths))

    def stage_sides(self, side: int, axis: int) -> list[int]:
        """The size along one axis that each stage's layers run at, for an input ``side``."""
        size = -(-side // self.patch[axis])  # the patch embedding pads up, then strides
        sides = [size]
        for _ in range(self.stages - 1):
            size = (size + 1) // 2  # MaskFormerSwinStage: height_downsampled = (height + 1) // 2
            sides.append(size)
        return sides

    def branches(self, canvas: Canvas) -> Branches:
        heights, widths = self.stage_sides(canvas.height, 0), self.stage_sides(canvas.width, 1)
        return Branches(
            crop=tuple(h % self.window != 0 or w % self.window != 0 for h, w in zip(heights, widths, strict=True)),
            embedding=(canvas.height % self.patch[0] != 0, canvas.width % self.patch[1] != 0),
            merging=tuple(h % 2 == 1 or w % 2 == 1 for h, w in zip(heights[:-1], widths[:-1], strict=True)),
        )

    def stages_that_can_pad(self) -> tuple[bool, ...]:
        """Per stage: whether some canvas makes it pad (window 4: stages 1 and 2 never do)."""
        return _stages_that_can_pad(self)

    def is_general(self, canvas: Canvas) -> bool:
        """Every stage that can pad pads here: tracing here keeps every crop in the graph."""
        crop = self.branches(canvas).crop
        return all(pads or not can for pads, can in zip(crop, self.stages_that_can_pad(), strict=True))

    def unservable(self, trace: Canvas, canvas: Canvas) -> str | None:
        """Why a graph traced at ``trace`` *without* the patch is wrong at ``canvas``, or None."""
        traced, here = self.branches(trace), self.branches(canvas)
        for stage, (was, now) in enumerate(zip(traced.crop, here.crop, strict=True), start=1):
            if now and not was:
                return f"Swin stage {stage} pads there but not at {trace}, so the graph lacks its crop"
        if traced.embedding != here.embedding:
            return "the patch embedding pads there and not at the trace canvas, or the other way round"
        if traced.merging != here.merging:
            return "a patch merging pads there and not at the trace canvas, or the other way round"
        return None


@functools.cache
def _stages_that_can_pad(geometry: SwinGeometry) -> tuple[bool, ...]:
    can = [False] * geometry.stages
    for axis in (0, 1):
        for side in _SIDES:
            for stage, size in enumerate(geometry.stage_sides(side, axis)):
                can[stage] = can[stage] or size % geometry.window != 0
    return tuple(can)


def _nearest(start: Canvas, accept: Callable[[Canvas], bool]) -> Canvas | None:
    """The accepted canvas closest to ``start`` in steps of 32 px (the smaller first), sides >= 64."""
    for distance in range(MAX_SIDE // CANVAS_MULTIPLE):
        ring = []
        for dh in range(-distance, distance + 1):
            for dw in {distance - abs(dh), abs(dh) - distance}:
                h = start.height + dh * CANVAS_MULTIPLE
                w = start.width + dw * CANVAS_MULTIPLE
                if 2 * CANVAS_MULTIPLE <= h <= MAX_SIDE and 2 * CANVAS_MULTIPLE <= w <= MAX_SIDE:
                    ring.append(Canvas(height=h, width=w))
        for canvas in sorted(ring, key=lambda c: (c.height * c.width, c.hw)):
            if accept(canvas):
                return canvas
    return None


def trace_canvas(geometry: SwinGeometry | None, default: Canvas) -> Canvas:
    """The canvas to trace at: ``default`` when it takes every general branch, else the nearest that does."""
    if geometry is None or geometry.is_general(default):
        return default
    found = _nearest(default, geometry.is_general)
    if found is None:  # cannot happen: a side of 32 * (an odd multiple of window + 1) pads every stage
        raise ValueError(f"no canvas makes every Swin stage pad (window {geometry.window})")
    return found


def extra_canvas(geometry: SwinGeometry | None, trace: Canvas, declared: list[Canvas], patched: bool = True) -> Canvas:
    """One canvas the user did not declare, to verify beside theirs.

    For a Swin: the one whose shape branches differ most from the trace canvas's (the smallest
    among those), among the canvases the graph can serve; otherwise the default canvas 64 px
    taller and narrower.
    """
    default = declared[0]
    if geometry is not None:
        limit = max(256, *(max(canvas.hw) for canvas in declared))
        traced = geometry.branches(trace)
        sides = [side for side in _SIDES if 2 * CANVAS_MULTIPLE <= side <= limit]
        candidates = [
            Canvas(height=h, width=w)
            for h in sides
            for w in sides
            if Canvas(height=h, width=w) not in declared
            and (patched or geometry.unservable(trace, Canvas(height=h, width=w)) is None)
        ]
        if candidates:
            return min(candidates, key=lambda c: (-geometry.branches(c).differences(traced), c.height * c.width, c.hw))
    for step in range(2, MAX_SIDE // CANVAS_MULTIPLE):
        offset = step * CANVAS_MULTIPLE
        canvas = Canvas(height=min(MAX_SIDE, default.height + offset), width=max(64, default.width - offset))
        if canvas not in declared:
            return canvas
    return Canvas(height=64, width=64)  # every other size is declared: unreachable in practice
