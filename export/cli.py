"""``maskserve export``: arguments here, torch imported only when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from maskserve.bundle import Task
from maskserve.cli import canvas_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Each dest is an ExportOptions field: main() builds the options from them.
    parser.add_argument("--model", required=True, help="hub id (owner/name) or local checkpoint directory")
    parser.add_argument("--out", required=True, type=Path, help="bundle directory to create")
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="default canvas, multiples of 32 (default: from the checkpoint's preprocessor config)",
    )
    parser.add_argument(
        "--canvas",
        dest="extra_canvases",
        action="append",
        default=[],
        metavar="HxW",
        help="an extra canvas the server may letterbox into (repeatable), e.g. 512x704",
    )
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch the graph and engines accept")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (18 or newer)")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and compute, float32 I/O (GPUs)")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="INT8 dynamic quantization of the weight MatMuls (CPUs with VNNI; check accuracy on your data)",
    )
    parser.add_argument(
        "--thing-ids",
        nargs="+",
        type=int,
        metavar="ID",
        help="label ids that are things; the rest are stuff (default: COCO-panoptic table, else all things)",
    )
    parser.add_argument("--default-task", choices=get_args(Task))
    parser.add_argument("--name", help="model name reported by the server (default: the checkpoint's name)")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the check against PyTorch")
    parser.add_argument(
        "--verify-images",
        type=Path,
        metavar="DIR",
        help="also verify on the images in DIR, letterboxed as the server does (recommended for a trained model)",
    )
    parser.add_argument(
        "--verify-provider",
        choices=("cpu", "cuda"),
        default="cpu",
        help="run the noise check in ONNX Runtime's CUDA provider against PyTorch on the GPU (needs "
        "onnxruntime-gpu); on the CPU an --fp16 graph is mostly computed in float32",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")


def main(args: argparse.Namespace) -> int:
    # Imported here so that `maskserve serve` and `--help` never load torch. Failures are
    # CommandErrors (ExportError: exit 2; VerificationFailed: the table, then exit 1), which
    # maskserve.cli reports as one line.
    from dataclasses import fields

    from maskserve.export.pipeline import ExportOptions, quiet_libraries, run_export

    quiet_libraries()
    args.extra_canvases = canvas_arguments("--canvas", args.extra_canvases)
    names = {field.name for field in fields(ExportOptions)}
    options = ExportOptions(**{key: value for key, value in vars(args).items() if key in names})
    manifest = run_export(options)
    print(f"bundle written to {args.out} ({manifest.name}, {len(manifest.labels)} labels, canvas {manifest.canvas})")
    return 0
