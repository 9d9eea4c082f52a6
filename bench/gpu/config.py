"""Sizes and places of the GPU benchmark, and their tiny CPU rehearsal (stdlib only)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What the benchmark serves: the facebook/maskformer-swin-tiny-ade architecture at 512x512.
# Things are every third ADE label (mixed things and stuff; stuff of one label merges in panoptic).
THING_IDS = tuple(range(0, 150, 3))


@dataclass(frozen=True)
class Config:
    rehearse: bool
    work: Path  # checkpoint, bundles, results: outside the repo copy on the device
    out: Path  # $OUT: what comes back from the device call
    pieces: Path  # this repo's .gpu/pieces (rehearsal: .gpu/rehearsal-pieces): built here, carried one at a time
    stash: Path  # where the device keeps the pieces it was sent, between calls
    site: Path  # where the wheels are installed (PYTHONPATH there)

    @property
    def device(self) -> str:
        """PyTorch's device, and ONNX Runtime's provider, for the runners under test."""
        return "cpu" if self.rehearse else "cuda"

    @property
    def canvas(self) -> tuple[int, int]:
        return (64, 64) if self.rehearse else (512, 512)

    @property
    def batches(self) -> tuple[int, ...]:
        return (1, 2) if self.rehearse else (1, 8, 32)

    @property
    def max_batch(self) -> int:
        return max(self.batches) * (2 if self.rehearse else 1)

    @property
    def warmup(self) -> int:
        """Untimed calls per (runner, batch) before timing: allocation, kernel choice, cuDNN search."""
        return 1 if self.rehearse else 5

    @property
    def point_seconds(self) -> float:
        """Timed calls per (runner, batch) run for at least this long (and at least ``min_repeats``)."""
        return 0.1 if self.rehearse else 2.0

    @property
    def min_repeats(self) -> int:
        return 2 if self.rehearse else 20

    @property
    def answer_images(self) -> int:
        return 3 if self.rehearse else 16

    @property
    def concurrency(self) -> tuple[int, ...]:
        return (1, 4) if self.rehearse else (1, 16, 64)

    @property
    def load_seconds(self) -> float:
        return 1.5 if self.rehearse else 12.0

    @property
    def assembled(self) -> Path:
        """Written by the assemble step into ``site``: what was installed there."""
        return self.site / ".maskserve-gpu-assembled.json"

    @property
    def results(self) -> Path:
        """Every step's JSON, kept on the machine for the final table ($OUT is emptied per call)."""
        return self.work / "results"

    def checkpoint(self) -> Path:
        return self.work / "checkpoint"

    def bundle(self, precision: str) -> Path:
        return self.work / f"bundle-{precision}"


def make_config(
    rehearse: bool,
    work: Path | None = None,
    out: Path | None = None,
    pieces: Path | None = None,
    stash: Path | None = None,
    site: Path | None = None,
) -> Config:
    rehearse = rehearse or os.environ.get("MASKSERVE_GPU_REHEARSE") == "1"
    base = (ROOT / ".bench" / "gpu-rehearsal") if rehearse else Path("/tmp/maskserve-gpu")
    work = work or base
    environment_out = os.environ.get("OUT")
    return Config(
        rehearse=rehearse,
        work=work,
        out=out or (Path(environment_out) if environment_out else work / "out"),
        pieces=pieces or ROOT / ".gpu" / ("rehearsal-pieces" if rehearse else "pieces"),
        stash=stash or (work / "stash" if rehearse else Path("/tmp/pieces")),
        site=site or (work / "site" if rehearse else Path("/tmp/site")),
    )
