"""Output formats at 4K: what each costs to write, beside the request it answers.

One 3840x2160 scene (a JPEG upload, as a 4K camera sends), segmented in-process by the demo
model through ``Segmenter`` (the server's path); then each format rendered from that same
``Result`` with ``render_parts``, as the server does in its worker pool. Two baselines show why
the PNG writer is maskserve's own: Pillow's PNG encoder at its default level (6) on the same
label map and on the same overlay picture.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from maskserve.bundle import Manifest
from maskserve.service import maps
from maskserve.service.formats import OutputFormat, render_parts
from maskserve.service.overlay import draw_overlay, segment_marks
from maskserve.service.result import Result
from maskserve.service.segmenter import Segmenter

SIZE = (2160, 3840)
REQUEST_STAGES = ("decode", "preprocess", "inference", "postprocess")


@dataclass(frozen=True)
class Row:
    task: str
    name: str
    seconds: tuple[float, ...]
    size_bytes: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass
class FormatsSection:
    model: str
    size: tuple[int, int]
    upload_bytes: int
    segments: dict[str, int] = field(default_factory=dict)  # task -> segments in the answer
    request_s: dict[str, float] = field(default_factory=dict)  # task -> median request, formats aside
    rows: list[Row] = field(default_factory=list)
    provenance: str = ""  # set when measured apart from the rest of the report (--formats-only)

    def share(self, row: Row) -> float:
        """The format's part of a request that answers in it."""
        return row.median / (self.request_s[row.task] + row.median)


def scene_jpeg(size: tuple[int, int] = SIZE, seed: int = 3) -> bytes:
    from demo.scenes import generate_scene

    image = generate_scene(seed, max(size)).image[: size[0], : size[1]]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _timed(call: Callable[[], bytes], repeats: int) -> tuple[tuple[float, ...], int]:
    seconds, size = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        size = len(call())
        seconds.append(time.perf_counter() - started)
    return tuple(seconds), size


def _render(fmt: OutputFormat, manifest: Manifest, result: Result, data: bytes, max_pixels: int) -> bytes:
    parts = render_parts(fmt, manifest, result, result.timing, 0.0, data, max_pixels)
    return b"".join(part.data for part in parts)


def _pillow_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # compress_level 6, Pillow's filter choice
    return buffer.getvalue()


def measure(bundle: Path, repeats: int, tasks: tuple[str, ...], size: tuple[int, int] = SIZE) -> FormatsSection:
    data = scene_jpeg(size)
    with Segmenter.load(bundle, provider="cpu") as segmenter:
        manifest = segmenter.manifest
        section = FormatsSection(model=manifest.name, size=size, upload_bytes=len(data))
        for task in tasks:
            runs = [segmenter.segment(data, task=task) for _ in range(repeats)]  # type: ignore[arg-type]
            result = runs[-1]
            section.segments[task] = len(result.segments)
            section.request_s[task] = statistics.median(sum(r.timing[s] for s in REQUEST_STAGES) for r in runs)
            for fmt in OutputFormat:
                render = partial(_render, fmt, manifest, result, data, segmenter.max_image_pixels)
                section.rows.append(Row(task, fmt.value, *_timed(render, repeats)))
            ids = maps.segment_map(result, np.uint8)
            rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            drawn = draw_overlay(rgb, ids, segment_marks(ids, result.segments))
            for name, pixels in (("label map", ids), ("overlay picture", drawn)):
                row = Row(task, f"baseline: {name}, Pillow PNG", *_timed(partial(_pillow_png, pixels), repeats))
                section.rows.append(row)
    return section


def render(section: FormatsSection) -> list[str]:
    height, width = section.size
    lines = [
        f"## Output formats at {width}x{height}",
        "",
        f"The demo model ({section.model}) segments one {width}x{height} scene uploaded as a "
        f"{section.upload_bytes / 1e6:.1f} MB JPEG, in-process through `Segmenter`; each format is then rendered "
        "from that same answer (`maskserve.service.formats.render_parts`, what the server runs in its worker pool). "
        "`encode` is the median over repeats; `share` is the format's part of a request answered in it "
        "(decode, preprocess, inference and postprocess, plus the encode). The COCO RLE of every format is made "
        "in postprocess (the request column), so `json` only dumps it; the other formats start from it. "
        "The overlays decode the upload again "
        "(the server keeps no full-size copy of it), which is part of their time. The baselines are Pillow's PNG "
        "encoder at its default level 6 on the same label map and the same overlay picture; maskserve's PNG writer "
        "uses the Up filter with zlib level 1 and the run-length strategy (`service/png.py`).",
        "",
        *([section.provenance, ""] if section.provenance else []),
        "| task | segments | request without encode (s) | format | encode (ms) | bytes | share |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in section.rows:
        share = "" if row.name.startswith("baseline") else f"{section.share(row):.0%}"
        lines.append(
            f"| {row.task} | {section.segments[row.task]} | {section.request_s[row.task]:.3f} | {row.name} | "
            f"{row.median * 1000:.1f} | {row.size_bytes:,} | {share} |"
        )
    return [*lines, ""]


def splice(report: str, lines: list[str]) -> str:
    """``report`` with its output-formats section replaced by ``lines`` (or inserted before the
    list of changes, or appended), the rest untouched."""
    section = "\n".join(lines).rstrip() + "\n"
    start = report.find("## Output formats")
    if start >= 0:
        end = report.find("\n## ", start)
        rest = report[end + 1 :] if end >= 0 else ""
        return report[:start] + section + ("\n" + rest if rest else "")
    marker = report.find("## What was changed")
    if marker >= 0:
        return report[:marker] + section + "\n" + report[marker:]
    return report.rstrip() + "\n\n" + section
