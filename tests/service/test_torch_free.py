"""The serving side never imports torch or transformers (the serving image has neither)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys


def test_service_imports_no_torch() -> None:
    # The OpenVINO backend too, where its extra is installed (openvino ships frontends that could).
    openvino = "import maskserve.service.backends.ov;" if importlib.util.find_spec("openvino") else ""
    code = (
        "import sys, maskserve.service.app, maskserve.service.cli, maskserve.service.backends;"
        f"{openvino}"
        "import maskserve.cli, maskserve.bundle;"
        "maskserve.cli.build_parser();"
        # Not scipy (which the model's loss needs): numba imports it where it is installed.
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')"
        " or m.startswith('maskserve.model')];"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
