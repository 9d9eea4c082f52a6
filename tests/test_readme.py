"""The README's Python example runs as written, from the repository root."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python_api_example() -> str:
    section = ROOT.joinpath("README.md").read_text().split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python API section has no python block"
    return match.group(1)


def test_python_api_example_runs() -> None:
    printed = io.StringIO()
    namespace: dict[str, object] = {}
    previous = Path.cwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(_python_api_example(), "README.md", "exec"), namespace)
    finally:
        os.chdir(previous)
    lines = printed.getvalue().splitlines()
    assert lines, "the example printed no segments"
    assert {line.split()[0] for line in lines} >= {"sky", "ground"}, lines
    label_map, results = namespace["label_map"], namespace["results"]
    assert label_map.shape == (256, 256)  # type: ignore[attr-defined]
    assert len(results) == 2 and all(r.segments for r in results)  # type: ignore[arg-type, attr-defined]
