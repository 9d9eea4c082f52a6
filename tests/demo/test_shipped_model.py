"""The shipped demo model: its bundle is the export of its checkpoint, it fits in the repo, and
the default server answers the example images with the right segments."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
from pycocotools import mask as coco_mask

from demo.metrics import PanopticEvaluator, panoptic_categories
from demo.scenes import LABELS, THING_IDS, generate_scene
from demo.ship import CHECKPOINT, EXAMPLE_SEEDS, EXAMPLE_SIZE, EXAMPLES
from maskserve.bundle import INPUTS, OUTPUTS, Bundle
from maskserve.export.onnx_export import sample_inputs
from tests.service.server import running_server

MAX_SHIPPED_BYTES = 25 * 1024 * 1024


def test_bundle_matches_a_fresh_export_of_the_checkpoint(demo_export, demo_bundle_dir: Path) -> None:
    import onnxruntime as ort

    fresh, _ = demo_export
    shipped = Bundle.load(demo_bundle_dir)
    assert shipped.manifest.source.sha256 == Bundle.load(fresh).manifest.source.sha256, "checkpoint changed"
    inputs = sample_inputs(2, shipped.manifest.canvas, seed=11)
    feeds = {name: tensor.numpy() for name, tensor in zip(INPUTS, inputs, strict=True)}
    a = ort.InferenceSession(str(shipped.model_path), providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(str(fresh / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    for name, x, y in zip(OUTPUTS, a, b, strict=True):
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, atol=1e-5, err_msg=name)
        else:
            assert (x == y).mean() >= 0.9999, name


def test_shipped_files_fit(demo_bundle_dir: Path) -> None:
    manifest = Bundle.load(demo_bundle_dir).manifest
    assert [label.name for label in manifest.labels] == list(LABELS.values())
    assert [label.id for label in manifest.labels if label.isthing] == list(THING_IDS)
    assert manifest.verification is not None and manifest.verification["passed"]
    files = [*demo_bundle_dir.iterdir(), *CHECKPOINT.iterdir()]
    assert sum(f.stat().st_size for f in files if f.is_file()) <= MAX_SHIPPED_BYTES


def _decode(rle: dict) -> np.ndarray:
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_default_server_segments_the_examples(demo_bundle_dir: Path) -> None:
    """The README's curl example: the answer, scored against the scene's ground truth."""
    evaluator = PanopticEvaluator(panoptic_categories(list(LABELS), THING_IDS))
    with running_server(demo_bundle_dir) as (url, _):
        assert httpx.get(f"{url}/v1/model").json()["name"] == "shapes"
        for index, seed in enumerate(EXAMPLE_SEEDS, start=1):
            scene = generate_scene(seed, EXAMPLE_SIZE)
            data = (EXAMPLES / f"scene-{index}.png").read_bytes()
            body = httpx.post(f"{url}/v1/segment", files={"image": ("x.png", data)}, timeout=60).json()
            assert body["image"] == {"width": EXAMPLE_SIZE, "height": EXAMPLE_SIZE}
            predicted = np.zeros((EXAMPLE_SIZE, EXAMPLE_SIZE), np.int32)
            for segment in body["segments"]:
                assert segment["label"] == LABELS[segment["label_id"]]
                predicted[_decode(segment["rle"])] = segment["id"]
            evaluator.add(
                scene.segment_map, scene.segments, predicted, [(s["id"], s["label_id"]) for s in body["segments"]]
            )
    result = evaluator.result()
    assert result.stuff.pq > 0.9, result
    assert result.pq > 0.5, result
