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
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16", "int8", "int8-static"),
        help="the body's precision (default fp32): fp16 for GPUs; bf16 for CPUs with AVX512-BF16 or AMX "
        "(the float32 graph, run at the runtime's bf16 inference precision: OpenVINO; needs openvino to export); "
        "int8 dynamic (weight MatMuls, activations quantized on the fly); int8-static (calibrated QDQ Conv and "
        "MatMul, the fastest on CPUs with VNNI). Every reduced precision is measured against fp32",
    )
    parser.add_argument("--fp16", action="store_true", help="the same as --precision fp16")
    parser.add_argument("--int8", action="store_true", help="the same as --precision int8 (dynamic)")
    parser.add_argument(
        "--calibration-images",
        type=Path,
        metavar="DIR",
        help="int8-static: calibrate on the images in DIR, letterboxed as the server does (a few dozen of your "
        "own; default: 32 generated demo scenes); any reduced precision: measure its accuracy on them",
    )
    parser.add_argument(
        "--benchmark-scenes",
        type=int,
        default=200,
        metavar="N",
        help="the demo model only: score mIoU and PQ of fp32 and the reduced precision on N held-out demo scenes "
        "(0 skips it)",
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.5,
        metavar="POINTS",
        help="fail the export when the reduced precision loses more mIoU or PQ points than this on the "
        "--benchmark-scenes",
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
