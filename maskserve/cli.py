"""The ``maskserve`` command: one subcommand per tool, each imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module with add_arguments/main, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("maskserve.export.cli", "turn a MaskFormer checkpoint into a verified ONNX bundle"),
    "serve": ("maskserve.service.cli", "serve a bundle over HTTP"),
    "build-engine": ("maskserve.service.engine_cli", "build, verify and cache a TensorRT engine for a bundle"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskserve", description="Serve MaskFormer segmentation models.")
    parser.add_argument("--version", action="version", version=f"maskserve {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(command)
    return parser


def _version() -> str:
    from maskserve import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.main(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
