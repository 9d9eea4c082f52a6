"""``maskserve build-engine``: build, verify and cache a TensorRT engine for a bundle."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from maskserve.cli import canvas_arguments
from maskserve.errors import CommandError, UsageError, first_line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    parser.add_argument("--fp16", action="store_true", help="FP16 engine (norms and softmaxes stay FP32)")
    parser.add_argument(
        "--batch",
        nargs=3,
        type=int,
        metavar=("MIN", "OPT", "MAX"),
        help="batch range of every optimization profile (default: 1, max/2, the bundle's max batch)",
    )
    parser.add_argument("--workspace", type=float, default=4.0, metavar="GB", help="builder workspace (default 4)")
    parser.add_argument(
        "--canvas",
        action="append",
        default=[],
        metavar="HxW",
        help="canvas to build a profile for (repeatable; default: the bundle's canvases)",
    )
    parser.add_argument("--out", type=Path, help="engine cache directory (default: BUNDLE/engines)")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the check against ONNX Runtime")
    parser.add_argument("--force", action="store_true", help="rebuild even when a fresh engine is cached")


def main(args: argparse.Namespace) -> int:
    from maskserve.bundle import Bundle
    from maskserve.service.backends import BackendError, choose_backend, tensorrt_installed, visible_gpus
    from maskserve.service.backends.tensorrt.manifest import default_batch_range

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    bundle = Bundle.load(args.bundle)
    canvases = [canvas.hw for canvas in canvas_arguments("--canvas", args.canvas)] or [
        c.hw for c in bundle.manifest.canvases
    ]
    batch = tuple(args.batch) if args.batch else default_batch_range(bundle.manifest.max_batch)
    if batch[2] > bundle.manifest.max_batch:
        raise UsageError(f"--batch max {batch[2]} exceeds the bundle's max batch {bundle.manifest.max_batch}")
    try:
        choose_backend("tensorrt", tensorrt_installed(), visible_gpus(), bundle.manifest.precision)
    except BackendError as exc:
        raise UsageError(str(exc)) from None

    from maskserve.service.engines import EngineRequest, ensure_engine

    try:
        path, manifest = ensure_engine(
            EngineRequest(
                bundle=bundle,
                cache_dir=args.out or bundle.directory / "engines",
                precision="fp16" if args.fp16 else "fp32",
                canvases=canvases,
                batch=batch,  # type: ignore[arg-type]
                workspace_gb=args.workspace,
                verify=args.verify,
                force=args.force,
            )
        )
    except Exception as exc:  # a parse or build failure (details were logged)
        raise CommandError(f"engine build failed: {first_line(exc)}") from exc
    print(f"engine: {path}")
    print(json.dumps({"key": manifest.key.slug(), "verification": manifest.verification}, indent=2))
    return 0
