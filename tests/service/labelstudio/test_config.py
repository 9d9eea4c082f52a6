"""Reading Label Studio labeling configs: which tag, which image field, which labels."""

from __future__ import annotations

import pytest

from maskserve.service.errors import InvalidRequest
from maskserve.service.labelstudio.config import controls_of, parse_label_config
from tests.service.labelstudio.configs import BITMASK_ONLY, BRUSH_ONLY, MULTI_TAG

DEMO_LABELS = ["circle", "square", "triangle", "sky", "ground"]


def test_multi_tag_config_prefers_the_requested_format() -> None:
    polygon = parse_label_config(MULTI_TAG, "polygon")
    assert (polygon.primary.kind, polygon.primary.name, polygon.primary.to_name) == (
        "PolygonLabels",
        "outline",
        "image",
    )
    assert polygon.primary.value_key == "image" and polygon.primary.score_threshold == 0.3
    assert polygon.for_holes is not None and polygon.for_holes.name == "paint"
    brush = parse_label_config(MULTI_TAG, "brush")
    assert brush.primary.name == "paint" and brush.for_holes is None
    # RectangleLabels and Choices are not ours.
    assert [c.name for c in controls_of(MULTI_TAG)] == ["outline", "paint"]


def test_a_config_with_one_kind_gets_that_kind() -> None:
    assert parse_label_config(BRUSH_ONLY, "polygon").primary.kind == "BrushLabels"
    bitmask = parse_label_config(BITMASK_ONLY, "polygon").primary
    assert (bitmask.kind, bitmask.name, bitmask.to_name, bitmask.value_key) == (
        "BitmaskLabels",
        "mask",
        "img",
        "picture",
    )


def test_label_map_follows_build_label_map() -> None:
    outline = parse_label_config(MULTI_TAG).primary
    # predicted_values first, then the exact value, then case-insensitive; triangle and ground unmapped.
    assert outline.label_map(DEMO_LABELS) == {"circle": "Circle", "square": "Box", "sky": "sky"}
    brush = parse_label_config(BRUSH_ONLY).primary
    assert brush.label_map(DEMO_LABELS) == {n: n.capitalize() for n in DEMO_LABELS}


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("<View><Image name='i' value='$i'/>", "not valid XML"),
        ("<View><Image name='i' value='$i'/><RectangleLabels name='r' toName='i'/></View>", "no PolygonLabels"),
        (
            "<View><Image name='i' value='$i'/><BrushLabels name='b' toName='i' model_skip='true'/></View>",
            "no PolygonLabels",
        ),
        ("<View><Image name='i' value='$i'/><BrushLabels name='b' toName='other'/></View>", "no PolygonLabels"),
        (
            "<View><Image name='i' value='https://x/y.png'/><BrushLabels name='b' toName='i'/></View>",
            "no PolygonLabels",
        ),
        (
            "<View><Image name='i' value='$i'/><BrushLabels name='b' toName='i' model_score_threshold='hi'/></View>",
            "not a number",
        ),
    ],
    ids=["bad xml", "no control", "model_skip", "no image target", "inline image", "bad threshold"],
)
def test_unusable_configs_say_why(config: str, needle: str) -> None:
    with pytest.raises(InvalidRequest, match=needle):
        parse_label_config(config)


def test_entity_bombs_are_refused() -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "aaaaaaaaaa">'
        + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
        + ']><View><Header value="&i;"/></View>'
    )
    with pytest.raises(InvalidRequest, match="not valid XML"):
        parse_label_config(bomb)
