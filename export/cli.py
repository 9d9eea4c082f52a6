"""``maskserve export``: arguments here, torch imported only when the command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub id (owner/name) or local checkpoint directory")
    parser.add_argument("--out", required=True, type=Path, help="bundle directory to create")
    parser.add_argument(
        "--size", nargs=2, type=int, metavar=("H", "W"),
        help="default canvas, multiples of 32 (default: from the checkpoint's preprocessor config)",
    )  # fmt: skip
    parser.add_argument(
        "--canvas", action="append", default=[], metavar="HxW",
        help="an extra canvas the server may letterbox into (repeatable), e.g. 512x704",
    )  # fmt: skip
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch the graph and engines accept")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (18 or newer)")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and compute, float32 I/O (GPUs)")
    parser.add_argument(
        "--int8", action="store_true",
        help="INT8 dynamic quantization of the weight MatMuls (CPUs with VNNI; check accuracy on your data)",
    )  # fmt: skip
    parser.add_argument(
        "--thing-ids", nargs="+", type=int, metavar="ID",
        help="label ids that are things; the rest are stuff (default: COCO-panoptic table, else all things)",
    )  # fmt: skip
    parser.add_argument("--default-task", choices=["panoptic", "instance", "semantic"])
    parser.add_argument("--name", help="model name reported by the server (default: the checkpoint's name)")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the check against PyTorch")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")


def _canvas(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ValueError(f"--canvas {text!r} is not of the form HxW")
    return int(parts[0]), int(parts[1])


def main(args: argparse.Namespace) -> int:
    # Imported here so that `maskserve serve` and `--help` never load torch.
    from maskserve.export.errors import ExportError, VerificationFailed
    from maskserve.export.pipeline import ExportOptions, print_error, quiet_libraries, run_export

    quiet_libraries()

    try:
        options = ExportOptions(
            model=args.model,
            out=args.out,
            size=tuple(args.size) if args.size else None,
            extra_canvases=[_canvas(text) for text in args.canvas],
            max_batch=args.max_batch,
            opset=args.opset,
            fp16=args.fp16,
            int8=args.int8,
            thing_ids=args.thing_ids,
            default_task=args.default_task,
            name=args.name,
            verify=args.verify,
            force=args.force,
        )
        manifest = run_export(options)
    except ValueError as exc:
        print_error(str(exc))
        return 2
    except ExportError as exc:
        print_error(str(exc))
        return exc.exit_code
    except VerificationFailed as exc:
        print(exc.report, file=sys.stderr)
        print_error("verification failed: the exported graph disagrees with PyTorch; no bundle was written")
        return exc.exit_code
    except Exception as exc:  # a bug or an unsupported model: one line, no traceback, no bundle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        print_error(f"export failed ({type(exc).__name__}): {first}")
        return 1
    print(f"bundle written to {args.out} ({manifest.name}, {len(manifest.labels)} labels, canvas {manifest.canvas})")
    return 0
