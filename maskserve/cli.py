"""The ``maskserve`` command: one subcommand per tool. Every subcommand module registers its
arguments without heavy imports; torch, onnxruntime and the app load only when one runs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from maskserve import __version__
from maskserve.bundle import Canvas
from maskserve.errors import CommandError, UsageError, first_line

# subcommand -> (module with add_arguments/main, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("maskserve.export.cli", "turn a MaskFormer checkpoint into a verified ONNX bundle"),
    "serve": ("maskserve.service.cli", "serve a bundle over HTTP"),
    "build-engine": ("maskserve.service.engine_cli", "build, verify and cache a TensorRT engine for a bundle"),
    "segment": ("maskserve.service.segment_cli", "segment images in-process or on a server into JSON (and pictures)"),
}


def canvas_arguments(flag: str, texts: list[str]) -> list[Canvas]:
    """``--canvas HxW`` values; a bad one is a one-line usage error (exit 2). Parsed in the
    subcommands' ``main`` rather than as an argparse ``type=``, whose errors come with a usage
    block."""
    try:
        return [Canvas.parse(text) for text in texts]
    except ValueError as exc:
        raise UsageError(f"{flag} {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskserve", description="Serve MaskFormer segmentation models.")
    parser.add_argument("--version", action="version", version=f"maskserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. The one place that decides what a failure prints: a ``CommandError``
    is its message (and details) with its exit code; anything else is a bug or an unsupported
    input, reported as one line with exit code 1, never a traceback."""
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.main(args))
    except KeyboardInterrupt:
        return 130
    except CommandError as exc:
        if exc.details:
            print(exc.details, file=sys.stderr)
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        print(f"error: {args.command} failed ({type(exc).__name__}): {first_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
