"""A Label Studio labeling config (``label_config``, ``schema`` in ``/setup``): the control tag to
predict into, its ``<Image>``, and how our label names map to its labels.

Control tags: ``PolygonLabels``, ``BrushLabels`` and ``BitmaskLabels`` whose ``toName`` is an
``<Image>`` (https://labelstud.io/tags/). Others (``RectangleLabels``, ``Choices``, ...) are left
alone. Attributes read, as in label-studio-ml-backend's YOLO example
(``label_studio_ml/examples/yolo/control_models/base.py``): ``model_skip="true"`` ignores a tag,
``model_score_threshold`` is its score threshold, and ``<Label predicted_values="a, b">`` names the
model labels that become that label (``label_studio_ml/model.py``, ``build_label_map``: then the
label's own value, exactly, then case-insensitively).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from maskserve.service.errors import InvalidRequest

Kind = Literal["PolygonLabels", "BrushLabels", "BitmaskLabels"]
KINDS: tuple[Kind, ...] = ("PolygonLabels", "BrushLabels", "BitmaskLabels")
# Preference when a config has several: the format asked for first, then the others.
PREFERENCE: dict[str, tuple[Kind, ...]] = {
    "polygon": ("PolygonLabels", "BrushLabels", "BitmaskLabels"),
    "brush": ("BrushLabels", "BitmaskLabels", "PolygonLabels"),
}


@dataclass(frozen=True)
class Label:
    value: str  # what a result names
    predicted_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Control:
    kind: Kind
    name: str  # the result's from_name
    to_name: str  # the <Image>'s name
    value_key: str  # the task data field holding the image URL ("$image" -> "image")
    labels: tuple[Label, ...]
    score_threshold: float | None = None

    @property
    def result_type(self) -> str:
        return self.kind.lower()  # "polygonlabels", "brushlabels", "bitmasklabels"

    def label_map(self, model_labels: Iterable[str]) -> dict[str, str]:
        """Model label name -> this tag's label: ``predicted_values`` first, then the label's value
        exactly, then case-insensitively (label-studio-ml-backend's ``build_label_map``)."""
        names = list(model_labels)
        lower = {name.lower(): name for name in reversed(names)}
        mapping: dict[str, str] = {}
        for label in self.labels:
            matched = [value for value in label.predicted_values if value in names]
            for value in matched:
                mapping.setdefault(value, label.value)
            if matched:
                continue
            if label.value in names:
                mapping.setdefault(label.value, label.value)
            elif label.value.lower() in lower:
                mapping.setdefault(lower[label.value.lower()], label.value)
        return mapping


@dataclass(frozen=True)
class Target:
    """What to predict into: ``primary``; and, when it is a PolygonLabels tag, a brush-like tag on
    the same image for segments with holes (polygons cannot have holes in Label Studio)."""

    primary: Control
    for_holes: Control | None = None


def parse_label_config(config: str, prefer: str = "polygon") -> Target:
    """The control tag to predict into; ``InvalidRequest`` (422) when the config has none."""
    controls = controls_of(config)
    by_kind = {kind: [c for c in controls if c.kind == kind] for kind in KINDS}
    for kind in PREFERENCE[prefer]:
        if by_kind[kind]:
            primary = by_kind[kind][0]
            break
    else:
        raise InvalidRequest(
            "the labeling config has no PolygonLabels, BrushLabels or BitmaskLabels tag on an <Image> "
            "(without model_skip) for maskserve to predict into"
        )
    for_holes = None
    if primary.kind == "PolygonLabels":
        same_image = [c for c in controls if c.kind != "PolygonLabels" and c.to_name == primary.to_name]
        for_holes = next(iter(sorted(same_image, key=lambda c: KINDS.index(c.kind))), None)
    return Target(primary, for_holes)


def controls_of(config: str) -> list[Control]:
    """Every usable control tag, in document order."""
    try:
        root = ET.fromstring(config)  # expat >= 2.4.1 refuses entity-expansion bombs; no external entities
    except ET.ParseError as exc:
        raise InvalidRequest(f"the labeling config is not valid XML: {exc}") from None
    images = {
        element.get("name", ""): element.get("value", "") for element in root.iter("Image") if element.get("name")
    }
    controls: list[Control] = []
    for element in root.iter():
        if element.tag not in KINDS or element.get("model_skip", "false").lower() in ("1", "true", "yes"):
            continue
        targets = [name.strip() for name in element.get("toName", "").split(",") if name.strip()]
        image = next((name for name in targets if name in images), None)
        name = element.get("name")
        if image is None or not name:
            continue
        value = images[image]
        if not value.startswith("$") or len(value) < 2:
            continue  # an image given inline, not from the task data (or valueList): nothing to fetch
        labels = tuple(
            Label(
                label.get("value", ""),
                tuple(v.strip() for v in label.get("predicted_values", "").split(",") if v.strip()),
            )
            for label in element.iter("Label")
            if label.get("value")
        )
        threshold = element.get("model_score_threshold") or element.get("score_threshold")
        try:
            score = float(threshold) if threshold is not None else None
        except ValueError:
            raise InvalidRequest(f"{element.tag} {name}: model_score_threshold {threshold!r} is not a number") from None
        controls.append(Control(element.tag, name, image, value[1:], labels, score))  # type: ignore[arg-type]
    return controls
