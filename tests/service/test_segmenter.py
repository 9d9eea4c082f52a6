"""``Segmenter``: the one request path, in-process. Its answers are the server's, byte for byte."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from maskserve import Result, Segmenter
from maskserve.bundle import Bundle
from maskserve.service.engines import answers
from maskserve.service.errors import ImageTooLarge, InvalidImage, InvalidRequest
from maskserve.service.postprocess import PanopticRule
from maskserve.service.response import render_json
from tests.service import images
from tests.service.server import running_server

PARAMS = {"task": "panoptic", "threshold": 0.2, "mask_threshold": 0.4, "overlap_threshold": 0.0}


@pytest.fixture(scope="module")
def segmenter(swin_bundle: Path) -> Segmenter:
    return Segmenter.load(swin_bundle, provider="cpu")


def _segments(result: Result) -> bytes:
    """The segments as the HTTP API renders them (timings left out)."""
    return render_json("m", result, {}, 0.0).split(b',"timing"')[0]


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_server_segmenter_and_engine_verification_agree_byte_for_byte(
    swin_bundle: Path, segmenter: Segmenter, task: str
) -> None:
    params = {**PARAMS, "task": task}
    data = [images.png(100, 150, seed=3), images.jpeg(90, 61, seed=4), images.png(128, 192, seed=5)]
    with running_server(swin_bundle) as (url, _):
        served = [
            httpx.post(f"{url}/v1/segment", params=params, files={"image": ("x", d)}, timeout=60).json() for d in data
        ]
    in_process = [segmenter.segment(d, **params) for d in data]
    verification = answers(segmenter, data, params)
    assert sum(len(body["segments"]) for body in served) > 0, "the fixture should produce segments"
    for body, ours, theirs in zip(served, in_process, verification, strict=True):
        assert body["segments"] == [s.to_json() for s in ours.segments]
        assert _segments(ours) == _segments(theirs)
        assert (body["image"]["height"], body["image"]["width"]) == (ours.height, ours.width)


def test_every_input_kind_gives_the_same_answer(segmenter: Segmenter, tmp_path: Path) -> None:
    pixels = images.gradient(70, 110)
    data = images.encode(pixels, "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    kinds = [data, path, str(path), Image.open(io.BytesIO(data)), pixels]
    results = [segmenter.segment(kind, "semantic") for kind in kinds]
    assert results[0].segments, "the fixture should produce segments"
    assert all(result == results[0] for result in results[1:])


def test_batch_equals_one_by_one(segmenter: Segmenter) -> None:
    data = [images.png(h, w, seed=i) for i, (h, w) in enumerate([(100, 150), (64, 64), (128, 190), (30, 30), (90, 61)])]
    batched = segmenter.segment_batch(data, **PARAMS)
    alone = [segmenter.segment(d, **PARAMS) for d in data]
    assert batched == alone
    assert [(r.height, r.width) for r in batched] == [(100, 150), (64, 64), (128, 190), (30, 30), (90, 61)]


def test_label_map_and_segment_map(segmenter: Segmenter) -> None:
    semantic = segmenter.segment(images.png(100, 150, seed=1), "semantic")
    label_map = semantic.label_map()
    assert label_map.shape == (100, 150) and label_map.dtype == np.int32
    assert (label_map >= 0).all(), "semantic segments tile the image"
    for segment in semantic.segments:
        assert np.array_equal(label_map == segment.label_id, segment.mask())
        assert segment.mask().sum() == segment.area
    panoptic = segmenter.segment(images.png(100, 150, seed=1), **PARAMS)
    assert panoptic.segments
    ids = panoptic.segment_map()
    for segment in panoptic.segments:
        assert np.array_equal(ids == segment.id, segment.mask())
    assert set(np.unique(panoptic.label_map())) <= {-1, *(s.label_id for s in panoptic.segments)}


def test_instance_overlaps_go_to_the_best_score(segmenter: Segmenter) -> None:
    result = segmenter.segment(images.png(100, 150, seed=2), "instance", threshold=0.0)
    assert len(result.segments) > 1
    label_map = result.label_map()
    best_first = sorted(result.segments, key=lambda s: -(s.score or 0))
    claimed = np.zeros(label_map.shape, bool)
    for segment in best_first:
        mine = segment.mask() & ~claimed
        assert (label_map[mine] == segment.label_id).all()
        claimed |= segment.mask()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "depth"}, "not served"),
        ({"threshold": 1.5}, "outside"),
        ({"mask_threshold": -0.1}, "outside"),
        ({"label_ids": [0, 99]}, "not labels"),
        ({"min_area": -1}, "negative"),
    ],
)
def test_bad_parameters(segmenter: Segmenter, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        segmenter.segment(images.png(20, 20), **kwargs)


def test_bad_images(segmenter: Segmenter, tmp_path: Path) -> None:
    with pytest.raises(InvalidImage):
        segmenter.segment(b"not an image")
    with pytest.raises(InvalidImage, match="cannot read"):
        segmenter.segment(tmp_path / "missing.png")
    with pytest.raises(InvalidImage, match="uint8"):
        segmenter.segment(np.zeros((10, 10, 3), np.float32))
    small = Segmenter(segmenter.bundle, segmenter.backend, max_image_pixels=100)
    for image in (np.zeros((20, 20, 3), np.uint8), images.png(20, 20)):
        with pytest.raises(ImageTooLarge):
            small.segment(image)


def test_load_defaults_to_the_demo_bundle() -> None:
    with Segmenter.load() as seg:
        assert seg.manifest.name == "shapes" and seg.backend.provider == "CPUExecutionProvider"
        assert seg.canvases == [c.hw for c in Bundle.load(seg.bundle.directory).manifest.canvases]


class _RecordingBackend:
    """The real backend, keeping the feeds of every call."""

    def __init__(self, inner) -> None:
        self.inner, self.feeds = inner, []
        self.name, self.provider, self.max_batch = inner.name, inner.provider, inner.max_batch

    def run(self, feeds, outputs):
        self.feeds.append(dict(feeds))
        return self.inner.run(feeds, outputs)

    def close(self) -> None:
        pass


def test_the_panoptic_rule_picks_the_graphs_upsampling(segmenter: Segmenter) -> None:
    """MaskFormer and Mask2Former upsample mask logits, transformers probabilities; the default is maskformer."""
    assert segmenter.postprocessor.rule is PanopticRule.MASKFORMER
    answers_by_rule = {}
    for rule in PanopticRule:
        backend = _RecordingBackend(segmenter.backend)
        seg = Segmenter(segmenter.bundle, backend, panoptic_rule=rule)
        answers_by_rule[rule] = seg.segment_batch([images.png(100, 150, seed=1), images.png(64, 64, seed=2)], **PARAMS)
        assert [int(v) for feeds in backend.feeds for v in feeds["panoptic_upsampling"]] == [int(rule.upsampling)] * 2
    # (transformers compares score-weighted probabilities with mask_threshold: few segments here)
    maskformer, mask2former = answers_by_rule[PanopticRule.MASKFORMER], answers_by_rule[PanopticRule.MASK2FORMER]
    assert all(result.segments for result in [*maskformer, *mask2former])
    assert maskformer != mask2former
