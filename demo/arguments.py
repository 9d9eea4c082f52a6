"""argparse types for the demo tools' paths, so a wrong path is one usage error, not a traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskserve.bundle import Bundle, BundleError
from maskserve.export.checkpoint import resolve_source
from maskserve.export.errors import ExportError


def checkpoint_dir(text: str) -> Path:
    """A local transformers checkpoint directory (the demo tools never download)."""
    try:
        source = Path(resolve_source(text))
    except ExportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not source.is_dir():
        raise argparse.ArgumentTypeError(f"checkpoint directory not found: {text}")
    return source


def training_run(text: str) -> Path:
    """A ``demo.train`` output directory: a checkpoint plus its ``training.json``."""
    path = checkpoint_dir(text)
    if not (path / "training.json").is_file():
        raise argparse.ArgumentTypeError(f"no training.json in {text}: not a demo.train output directory")
    return path


def bundle_dir(text: str) -> Path:
    """An exported bundle directory."""
    try:
        Bundle.load(text)
    except BundleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return Path(text)


def labelled_bundle(text: str) -> tuple[str, Path]:
    """``LABEL=DIR``: a bundle and the name its row gets."""
    label, sep, path = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"expected LABEL=DIR, got {text!r}")
    return label, bundle_dir(path)
