"""``maskserve segment``, run as a user runs it: in-process and against a real server, with a
full queue (503 Retry-After) and images that fail."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskserve import Segmenter
from maskserve.service.response import render_json
from tests.conftest import run_cli
from tests.service import images
from tests.service.server import HeldBackend, metric, running_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.png"))


@pytest.fixture(scope="module")
def expected(demo_bundle_dir: Path) -> dict[str, list[dict]]:
    """Each example's segments, from Segmenter directly."""
    with Segmenter.load(demo_bundle_dir, provider="cpu") as segmenter:
        return {
            name: json.loads(render_json("shapes", segmenter.segment(EXAMPLES / f"{name}.png"), {}, 0.0))["segments"]
            for name in NAMES
        }


def _check_outputs(out: Path, expected: dict[str, list[dict]]) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.json" for n in NAMES] + [f"{n}.overlay.png" for n in NAMES]
    )
    for name in NAMES:
        assert json.loads((out / f"{name}.json").read_text())["segments"] == expected[name]
        picture = np.asarray(Image.open(out / f"{name}.overlay.png"))
        original = np.asarray(Image.open(EXAMPLES / f"{name}.png").convert("RGB"))
        assert picture.shape == original.shape and (picture != original).any()


def test_in_process_writes_a_json_and_a_picture_per_example(tmp_path: Path, expected) -> None:
    out = tmp_path / "out"
    result = run_cli("segment", str(EXAMPLES), "--out", str(out), "--overlay")
    assert result.returncode == 0, result.stderr
    _check_outputs(out, expected)
    assert f"{len(NAMES)}/{len(NAMES)} [" in result.stderr and "img/s" in result.stderr
    assert f"wrote {len(NAMES)} of {len(NAMES)} answers" in result.stderr


def test_against_a_server_the_files_are_the_same(tmp_path: Path, demo_bundle_dir: Path, expected) -> None:
    out = tmp_path / "out"
    with running_server(demo_bundle_dir) as (url, _):
        result = run_cli("segment", str(EXAMPLES), "--out", str(out), "--overlay", "--url", url)
        assert result.returncode == 0, result.stderr
        _check_outputs(out, expected)
        local = tmp_path / "local"
        assert run_cli("segment", str(EXAMPLES), "--out", str(local), "--overlay").returncode == 0
        for name in NAMES:  # drawn on the client from the answer: the in-process picture, exactly
            assert (out / f"{name}.overlay.png").read_bytes() == (local / f"{name}.overlay.png").read_bytes()
        png = tmp_path / "png"
        one = EXAMPLES / "scene-1.png"
        result = run_cli("segment", str(one), "--out", str(png), "--url", url, "--format", "png", "--task", "semantic")
        assert result.returncode == 0, result.stderr
        assert "[" not in result.stderr  # one image: no progress bar
    document = json.loads((png / "scene-1.json").read_text())
    label_map = np.asarray(Image.open(png / "scene-1.png"))
    assert document["task"] == "semantic" and label_map.shape == (256, 256)
    assert {s["label_id"] for s in document["segments"]} == set(np.unique(label_map).tolist()) - {255}


def test_coco_panoptic_files_name_each_other(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("segment", str(EXAMPLES / "scene-2.png"), "--out", str(out), "--format", "coco_panoptic")
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "scene-2.json").read_text())
    assert document["annotation"]["file_name"] == "scene-2.png"
    rgb = np.asarray(Image.open(out / "scene-2.png")).astype(int)
    ids = set(np.unique(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]).tolist()) - {0}
    assert ids == {s["id"] for s in document["annotation"]["segments_info"]}


def test_a_full_queue_is_waited_out(tmp_path: Path, demo_bundle_dir: Path, expected) -> None:
    held = HeldBackend()
    settings = {"max_queue": 1, "max_batch_size": 1, "max_delay_ms": 0}
    with running_server(demo_bundle_dir, wrap_backend=held.wrap, **settings) as (url, _):
        held.hold()
        out = tmp_path / "out"
        command = [sys.executable, "-m", "maskserve.cli", "segment", str(EXAMPLES), "--out", str(out)]
        child = subprocess.Popen(
            [*command, "--overlay", "--url", url, "--concurrency", "4", "--retries", "30"],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert held.held.wait(60), "no request reached the model"
            deadline = time.monotonic() + 60  # four at once: one runs, one waits, two are refused
            while metric(url, "maskserve_rejected_total", 'reason="queue_full"') < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert metric(url, "maskserve_rejected_total", 'reason="queue_full"') >= 2
        finally:
            held.release()
        _, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr
    _check_outputs(out, expected)


def test_failures_are_reported_at_the_end_and_the_rest_written(tmp_path: Path, demo_bundle_dir: Path) -> None:
    source = tmp_path / "in"
    (source / "nested").mkdir(parents=True)
    shutil.copy(EXAMPLES / "scene-1.png", source / "good.png")
    shutil.copy(EXAMPLES / "scene-2.png", source / "nested" / "good2.png")
    (source / "corrupt.png").write_bytes(images.truncated(images.png(300, 300)))
    noise = np.random.default_rng(1).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    (source / "huge.png").write_bytes(buffer.getvalue())
    (source / "notes.txt").write_text("not an image, not picked up")
    with running_server(demo_bundle_dir, max_body_bytes=200_000) as (url, _):
        out = tmp_path / "out"
        result = run_cli("segment", str(source), "--out", str(out), "--url", url)
    assert result.returncode == 1, result.stderr
    assert (out / "good.json").is_file() and (out / "nested" / "good2.json").is_file()
    assert not (out / "corrupt.json").exists() and not (out / "huge.json").exists()
    tail = result.stderr[result.stderr.index("2 failed:") :]
    assert f"{source / 'corrupt.png'}: 400 invalid_image" in tail
    assert f"{source / 'huge.png'}: 413 payload_too_large" in tail
    assert "wrote 2 of 4 answers" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["nope.png"], "no such file or directory: nope.png"),
        (["--threshold", "1.5", "examples"], "outside [0, 1]"),
        (["--concurrency", "0", "examples"], "--concurrency must be at least 1"),
        (["examples/scene-1.png", "examples/scene-1.png"], "would both be written as scene-1"),
        (["--label-ids", "0,99", "examples/scene-1.png"], "label_ids [99] are not labels"),
        (["--provider", "foo", "examples/scene-1.png"], "argument --provider: invalid choice: 'foo'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "maskserve.cli", "segment", "--out", str(tmp_path / "o"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
