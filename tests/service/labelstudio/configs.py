"""Labeling configs and request bodies as Label Studio sends them.

Shapes from label-studio-ml-backend (HumanSignal/label-studio-ml-backend@d02cedf3): the configs of
``label_studio_ml/examples/yolo/tests/test_polygon_labels.py`` and ``test_brush_labels.py``
(``model_score_threshold``), ``test_common.py`` (``predicted_values="car, truck"``), and the
``/setup`` body of ``tests/test_api.py`` (``project``, ``schema``, ``extra_params``). The bodies Label
Studio itself sends: ``label_studio/ml/api_connector.py`` (``MLApi.setup``: ``project`` as
``"<id>.<created_at>"``, ``schema``, ``hostname``, ``access_token``, ``extra_params``;
``_prep_prediction_req``: ``tasks``, ``project``, ``label_config``, ``params`` with ``login``,
``password``, ``context``), read at cyyever/label-studio@8fe76040, with tasks as its
``TaskSimpleSerializer`` writes them (``id``, ``data``, ``meta``, ``annotations``, ``predictions``, ...).
"""

from __future__ import annotations

from typing import Any

# Several tags: the control tags maskserve predicts into, one it leaves alone (RectangleLabels),
# a classification (Choices) and layout (Header), as real projects mix them. The demo model's
# labels are circle, square, triangle, sky, ground: "Circle" matches case-insensitively, "Box"
# through predicted_values, "sky" exactly; triangle and ground have no polygon label.
MULTI_TAG = """
<View>
  <Header value="Outline the shapes"/>
  <Image name="image" value="$image" zoom="true"/>
  <PolygonLabels name="outline" toName="image" strokeWidth="2" model_score_threshold="0.3">
    <Label value="Circle" background="red"/>
    <Label value="Box" background="blue" predicted_values="square, rectangle"/>
    <Label value="sky" background="green"/>
  </PolygonLabels>
  <BrushLabels name="paint" toName="image">
    <Label value="Circle"/>
    <Label value="Box" predicted_values="square"/>
    <Label value="sky"/>
    <Label value="ground"/>
  </BrushLabels>
  <RectangleLabels name="boxes" toName="image">
    <Label value="Circle"/>
  </RectangleLabels>
  <Choices name="quality" toName="image" choice="single">
    <Choice value="good"/>
    <Choice value="blurry"/>
  </Choices>
</View>
"""

# As in the YOLO example's test_brush_labels.py: one BrushLabels tag with a threshold.
BRUSH_ONLY = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="label" toName="image" model_score_threshold="0.6">
    <Label value="Circle" background="green"/>
    <Label value="Square" background="blue"/>
    <Label value="Sky"/>
    <Label value="Ground"/>
    <Label value="Triangle"/>
  </BrushLabels>
</View>
"""

BITMASK_ONLY = """
<View>
  <Image name="img" value="$picture" smoothing="false"/>
  <BitmaskLabels name="mask" toName="img"><Label value="circle"/><Label value="sky"/></BitmaskLabels>
</View>
"""


def task(task_id: int, image: str, project: int = 3) -> dict[str, Any]:
    return {
        "id": task_id,
        "data": {"image": image},
        "meta": {},
        "annotations": [],
        "predictions": [],
        "project": project,
        "inner_id": task_id,
        "file_upload": 9,
        "is_labeled": False,
        "overlap": 1,
        "total_annotations": 0,
        "total_predictions": 0,
        "cancelled_annotations": 0,
        "created_at": "2026-08-01T10:00:00.000000Z",
        "updated_at": "2026-08-01T10:00:00.000000Z",
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "updated_by": None,
        "comment_authors": [],
    }


def setup_body(config: str) -> dict[str, Any]:
    return {
        "project": "3.1722506400",
        "schema": config,
        "hostname": "http://localhost:8080",
        "access_token": "a3f1c0ffee0ddba11",
        "extra_params": None,
    }


def predict_body(tasks: list[dict[str, Any]], config: str) -> dict[str, Any]:
    return {
        "tasks": tasks,
        "project": "3.1722506400",
        "label_config": config,
        "params": {"login": None, "password": None, "context": None},
    }
