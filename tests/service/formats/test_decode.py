"""Answers read back on the client side give the server's own segment map, in every format."""

from __future__ import annotations

import numpy as np
import pytest

from maskserve.bundle import Bundle
from maskserve.service import maps
from maskserve.service.formats import OutputFormat, render_parts
from maskserve.service.formats.decode import decode_answer
from tests.service import results


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
@pytest.mark.parametrize(
    "fmt", [OutputFormat.JSON, OutputFormat.POLYGONS, OutputFormat.PNG, OutputFormat.COCO_PANOPTIC]
)
def test_every_mask_format_reads_back_to_the_segment_map(demo_bundle_dir, task: str, fmt: OutputFormat) -> None:
    manifest = Bundle.load(demo_bundle_dir).manifest
    result = results.synthetic(task)
    parts = {part.name: part for part in render_parts(fmt, manifest, result, {}, 0.0)}
    decoded = decode_answer(fmt, parts)
    assert np.array_equal(decoded.segment_map, maps.segment_map(result))
    shown = {int(i) for i in np.unique(decoded.segment_map)} - {0}
    assert {mark.id for mark in decoded.marks} == shown
    for mark in decoded.marks:
        assert decoded.segment_map[int(mark.y), int(mark.x)] == mark.id  # each label on its own segment


def test_pictures_are_not_masks(demo_bundle_dir) -> None:
    with pytest.raises(ValueError, match="pictures"):
        decode_answer(OutputFormat.OVERLAY, {})
