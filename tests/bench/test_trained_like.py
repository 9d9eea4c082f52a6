"""Trained-like random weights answer decisively, reproducibly, and the checkpoint is cached."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import MaskFormerForInstanceSegmentation

from bench.checkpoints import save_trained_like, tiny_swin_config
from bench.trained_like import describe, make_trained_like
from demo.scenes import generate_scene

SIDE = 64


def _images(offset: int, count: int) -> list:
    return [generate_scene(offset + i, SIDE).image for i in range(count)]


def test_a_random_model_becomes_decisive_and_stays_reproducible() -> None:
    torch.manual_seed(0)
    model = MaskFormerForInstanceSegmentation(tiny_swin_config()).eval()
    before = describe(model, _images(0, 2))
    fitted = make_trained_like(model, _images(100, 4), seed=3)
    after = describe(model, _images(0, 2))
    # Random heads keep no query above 0.5 and leave most mask pixels undecided.
    assert before["queries_above_0.5"] < 1.0 and before["undecided_mask_pixels"] > 0.9
    assert 5.0 <= after["queries_above_0.5"] <= 40.0, after
    assert after["mean_kept_score"] > 0.6, after
    assert after["undecided_mask_pixels"] < 0.3, after  # random: all of them
    assert all(value == value and abs(value) < 1e6 for value in fitted.values()), fitted

    torch.manual_seed(0)
    again = MaskFormerForInstanceSegmentation(tiny_swin_config()).eval()
    assert make_trained_like(again, _images(100, 4), seed=3) == fitted
    torch.testing.assert_close(again.class_predictor.weight, model.class_predictor.weight, rtol=0, atol=0)


def test_save_trained_like_keeps_a_matching_checkpoint(tmp_path: Path) -> None:
    config = tiny_swin_config(labels=20, queries=30)
    first = save_trained_like(tmp_path, config, SIDE, seed=1)
    marker = tmp_path / "trained_like.json"
    stamp = marker.stat().st_mtime_ns
    assert save_trained_like(tmp_path, config, SIDE, seed=1) == first
    assert marker.stat().st_mtime_ns == stamp  # kept, not rebuilt
    assert json.loads(marker.read_text())["wanted"]["seed"] == 1
    save_trained_like(tmp_path, config, SIDE, seed=2)
    assert json.loads(marker.read_text())["wanted"]["seed"] == 2  # other arguments: rebuilt
    reloaded = MaskFormerForInstanceSegmentation.from_pretrained(tmp_path)
    assert reloaded.config.num_labels == 20
