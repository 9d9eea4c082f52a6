"""Write a bundle directory atomically: stage in a temp dir beside it, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from maskserve.export.errors import ExportError


def check_destination(out: Path, force: bool) -> None:
    """Fail fast, before any long step, when the bundle could not be written."""
    if out.exists() and not force:
        raise ExportError(f"output directory {out} already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise ExportError(f"output path {out} exists and is not a directory")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {parent}: {exc.strerror}") from exc
    if not os.access(parent, os.W_OK):
        raise ExportError(f"cannot write to {parent}")


@contextmanager
def staged_bundle(out: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces ``out``, on error it vanishes.

    The staging directory sits next to ``out`` so that the final rename stays on one file
    system and is atomic: readers see the old bundle or the new one, never half of one.
    """
    check_destination(out, force)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it 0700; a bundle is read by other users (containers)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if out.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.rename(out, previous / "bundle")
    os.rename(staging, out)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
