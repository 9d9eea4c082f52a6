"""``maskserve segment IMAGE_OR_DIR...``: segment images, in-process or on a server, into files.

Without ``--url`` the images go through ``Segmenter`` in this process (the server's request
path, so the files are the server's answers byte for byte); with ``--url`` they are posted to
that server, several at once (``--concurrency``), waiting out a 503's ``Retry-After`` up to
``--retries`` times. Each image gives ``OUT/<name>.json`` (and ``OUT/<name>.png`` for the
``png`` and ``coco_panoptic`` formats, ``OUT/<name>.overlay.png`` with ``--overlay``); images
found in a directory keep their path below it. A failed image is reported at the end and the
others go on; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskserve.bundle import TASKS
from maskserve.errors import UsageError
from maskserve.service.backends import PROVIDER_CHOICES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
FORMATS = ("json", "polygons", "png", "coco_panoptic", "overlay", "overlay_jpeg")
SUFFIXES = {"segments": ".json", "annotation": ".json", "label_map": ".png", "panoptic": ".png"}


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or directories to search")
    parser.add_argument("--url", help="post to this server (e.g. http://127.0.0.1:8000); default: run in-process")
    parser.add_argument("--out", type=Path, default=Path("out"), help="directory for the answers (default: out)")
    parser.add_argument("--format", choices=FORMATS, default="json", help="answer format (default: json, COCO RLE)")
    parser.add_argument("--overlay", action="store_true", help="also write a picture with the masks drawn")
    parser.add_argument("--overlay-format", choices=("png", "jpeg"), default="png", help="picture type (default png)")
    parser.add_argument("--task", choices=TASKS, help="default: the bundle's")
    parser.add_argument("--threshold", type=_unit, help="minimum segment score")
    parser.add_argument("--mask-threshold", type=_unit, help="mask probability cut-off")
    parser.add_argument("--overlap-threshold", type=_unit, help="panoptic overlap test")
    parser.add_argument("--label-ids", help="only these label ids, comma-separated")
    parser.add_argument("--min-area", type=_count, default=0, help="drop segments smaller than this many pixels")
    parser.add_argument("--concurrency", type=int, default=4, help="images in flight at once (default 4)")
    parser.add_argument("--retries", type=_count, default=5, help="waits for a 503's Retry-After per image (default 5)")
    parser.add_argument(
        "--api-key", default=os.environ.get("MASKSERVE_API_KEY"), help="bearer token (env MASKSERVE_API_KEY)"
    )
    parser.add_argument("--bundle", type=Path, help="in-process: bundle directory (default: the demo model)")
    parser.add_argument(
        "--provider", choices=PROVIDER_CHOICES, default="auto", help="in-process: ONNX Runtime provider (default auto)"
    )


@dataclass(frozen=True)
class Item:
    path: Path
    stem: Path  # the output name without suffix, relative to --out


def gather(inputs: Iterable[str]) -> list[Item]:
    """Files as given, directories searched for images; one output name each."""
    items: list[Item] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            items += [Item(p, p.relative_to(path).with_suffix("")) for p in found]
        elif path.is_file():
            items.append(Item(path, Path(path.stem)))
        else:
            raise UsageError(f"no such file or directory: {text}")
    if not items:
        raise UsageError("no images found in " + ", ".join(inputs))
    stems: dict[Path, Path] = {}
    for item in items:
        if item.stem in stems:
            raise UsageError(f"{stems[item.stem]} and {item.path} would both be written as {item.stem}")
        stems[item.stem] = item.path
    return items


def main(args: argparse.Namespace) -> int:
    from maskserve.service.formats import OutputFormat
    from maskserve.service.progress import Progress

    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {args.concurrency}")
    items = gather(args.inputs)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is not a directory")
    fmt = OutputFormat(args.format)
    picture = None
    if args.overlay and fmt not in (OutputFormat.OVERLAY, OutputFormat.OVERLAY_JPEG):
        picture = OutputFormat.OVERLAY if args.overlay_format == "png" else OutputFormat.OVERLAY_JPEG
    segment_one, close = _remote(args, fmt, picture) if args.url else _in_process(args, fmt, picture)
    progress = Progress(len(items)) if len(items) > 1 else None
    failures: list[tuple[Item, str]] = []
    written = 0
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(args.concurrency, thread_name_prefix="maskserve-segment") as pool:
            futures = {pool.submit(_one, segment_one, item, args.out): item for item in items}
            for future in as_completed(futures):
                error = future.exception()
                if error is None:
                    written += 1
                else:
                    failures.append((futures[future], _describe(error)))
                if progress is not None:
                    progress.advance(ok=error is None)
    finally:
        close()
    where = args.url or "in-process"
    print(
        f"wrote {written} of {len(items)} answers to {args.out} ({where}, {time.monotonic() - started:.1f} s)",
        file=sys.stderr,
    )
    if failures:
        print(f"{len(failures)} failed:", file=sys.stderr)
        for item, reason in sorted(failures, key=lambda pair: str(pair[0].path)):
            print(f"  {item.path}: {reason}", file=sys.stderr)
        return 1
    return 0


Segment = Callable[[Path, bytes], list[Any]]  # (path, image bytes) -> the answer's parts


def _one(segment: Segment, item: Item, out: Path) -> None:
    from maskserve.service.errors import InvalidImage

    try:
        data = item.path.read_bytes()
    except OSError as exc:
        raise InvalidImage(f"cannot read {item.path}: {exc.strerror or exc}") from exc
    parts = segment(item.path, data)
    target = out / item.stem
    target.parent.mkdir(parents=True, exist_ok=True)
    for part in parts:
        data = part.data
        if part.name == "overlay":
            suffix = ".overlay.jpg" if part.media_type == "image/jpeg" else ".overlay.png"
        else:
            suffix = SUFFIXES[part.name]
        if part.name == "annotation":  # name the PNG written beside it, as panopticapi looks it up
            document = json.loads(data)
            document["annotation"]["file_name"] = f"{target.name}.png"
            data = json.dumps(document, separators=(",", ":")).encode()
        Path(f"{target}{suffix}").write_bytes(data)


def _params(args: argparse.Namespace) -> dict[str, Any]:
    label_ids = None
    if args.label_ids:
        try:
            label_ids = [int(part) for part in args.label_ids.split(",") if part.strip()]
        except ValueError:
            raise UsageError(f"--label-ids must be integers, got {args.label_ids}") from None
    return {
        "task": args.task,
        "threshold": args.threshold,
        "mask_threshold": args.mask_threshold,
        "overlap_threshold": args.overlap_threshold,
        "label_ids": label_ids,
        "min_area": args.min_area,
    }


def _in_process(args: argparse.Namespace, fmt: Any, picture: Any) -> tuple[Segment, Callable[[], None]]:
    from maskserve.service.errors import InvalidRequest
    from maskserve.service.formats import render_parts
    from maskserve.service.segmenter import Segmenter

    segmenter = Segmenter.load(args.bundle, provider=args.provider)
    params = _params(args)
    try:
        segmenter.params(**params)
    except InvalidRequest as exc:
        segmenter.close()
        raise UsageError(exc.message) from None
    manifest, max_pixels = segmenter.manifest, segmenter.max_image_pixels

    def segment(path: Path, data: bytes) -> list[Any]:
        started = time.perf_counter()
        result = segmenter.segment(data, **params)
        total = time.perf_counter() - started
        parts = render_parts(fmt, manifest, result, result.timing, total, data, max_pixels)
        if picture is not None:
            parts += render_parts(picture, manifest, result, result.timing, total, data, max_pixels)
        return parts

    return segment, segmenter.close


def _remote(args: argparse.Namespace, fmt: Any, drawing: Any) -> tuple[Segment, Callable[[], None]]:
    from maskserve.service.client import SegmentClient
    from maskserve.service.decode import DEFAULT_MAX_IMAGE_PIXELS, open_image, to_rgb
    from maskserve.service.formats.decode import decode_answer
    from maskserve.service.formats.multipart import Part
    from maskserve.service.overlay import PictureKind, encode_picture, picture

    chosen = _params(args)
    params = {k: str(v) for k, v in chosen.items() if v is not None and k not in ("label_ids", "min_area")}
    if chosen["label_ids"]:
        params["label_ids"] = ",".join(map(str, chosen["label_ids"]))
    if chosen["min_area"]:
        params["min_area"] = str(chosen["min_area"])
    params["format"] = fmt.value
    client = SegmentClient(args.url, api_key=args.api_key, retries=args.retries, connections=args.concurrency)

    def segment(path: Path, data: bytes) -> list[Any]:
        parts = client.segment(data, path.name, params)
        if drawing is not None:
            decoded = decode_answer(fmt, {part.name: part for part in parts})
            image = to_rgb(open_image(data, DEFAULT_MAX_IMAGE_PIXELS))
            kind: PictureKind = "png" if drawing.value == "overlay" else "jpeg"
            drawn = picture(image, decoded.segment_map, decoded.marks, in_place=True)
            parts.append(Part("overlay", f"image/{kind}", encode_picture(drawn, kind)))
        return parts

    return segment, client.close


def _describe(error: BaseException) -> str:
    from maskserve.service.client import Failure
    from maskserve.service.errors import ServiceError, classify

    if isinstance(error, Failure):
        return str(error)
    if isinstance(error, ServiceError):
        status, error_type, _ = classify(error)
        return f"{status} {error_type}: {error.message}"
    return f"{type(error).__name__}: {error}"
