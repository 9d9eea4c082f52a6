"""Derive the bundle's labels, canvas and normalization from a checkpoint."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from maskserve.bundle import CANVAS_MULTIPLE, Canvas, Label, Normalization
from maskserve.export.coco_panoptic import coco_panoptic_thing_ids
from maskserve.export.errors import ExportError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FALLBACK_CANVAS = 512


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def build_labels(id2label: dict[int, str], thing_ids: Iterable[int] | None) -> tuple[Label, ...]:
    """Labels in id order with the thing/stuff split.

    The split comes from ``thing_ids`` when given, else from the built-in COCO-panoptic table
    when the names match it, else every label is a thing (with a warning, because panoptic
    stuff merging then never happens).
    """
    ids = sorted(int(key) for key in id2label)
    if ids != list(range(len(ids))):
        raise ExportError(f"id2label ids must be 0..{len(ids) - 1} without gaps")
    names = [str(id2label[i]) for i in ids]
    if thing_ids is not None:
        things = set(thing_ids)
        bad = sorted(things - set(ids))
        if bad:
            raise ExportError(f"--thing-ids {bad} are not label ids (0..{len(ids) - 1})")
    else:
        coco = coco_panoptic_thing_ids(names)
        if coco is not None:
            things = coco
        else:
            warn("labels are not the COCO-panoptic set and --thing-ids was not given: every label is a thing")
            things = set(ids)
    return tuple(Label(id=i, name=names[i], isthing=i in things) for i in ids)


def canvas_from_preprocessor(preprocessor: dict[str, Any]) -> Canvas:
    """The canvas the checkpoint was trained at, rounded up to a multiple of 32.

    transformers' configs spell the size as an int (shortest edge), ``{"shortest_edge"}``
    or ``{"height", "width"}``; a shortest-edge size becomes a square canvas.
    """
    size = preprocessor.get("size")
    if isinstance(size, dict) and "height" in size and "width" in size:
        height, width = int(size["height"]), int(size["width"])
    elif isinstance(size, dict) and "shortest_edge" in size:
        height = width = int(size["shortest_edge"])
    elif isinstance(size, int | float):
        height = width = int(size)
    else:
        warn(
            f"no image size in the checkpoint's {'preprocessor config' if preprocessor else 'files'}: "
            f"using a {FALLBACK_CANVAS}x{FALLBACK_CANVAS} canvas"
        )
        height = width = FALLBACK_CANVAS
    return Canvas(height=_round_up(height), width=_round_up(width))


def _round_up(value: int) -> int:
    return max(CANVAS_MULTIPLE, -(-value // CANVAS_MULTIPLE) * CANVAS_MULTIPLE)


def normalization_from_preprocessor(preprocessor: dict[str, Any]) -> Normalization:
    mean = tuple(float(v) for v in preprocessor.get("image_mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in preprocessor.get("image_std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ExportError("the preprocessor config's image_mean/image_std must be three numbers, std > 0")
    rescale = float(preprocessor.get("rescale_factor", 1 / 255))
    if preprocessor.get("do_rescale") is False:
        rescale = 1.0
    if preprocessor.get("do_normalize") is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return Normalization(mean=mean, std=std, rescale_factor=rescale)  # type: ignore[arg-type]
