"""The ways maskserve can serve one checkpoint on this CPU: a bundle precision on a runtime.

Each ``Variant`` is one runner (one row group) of the report. A variant appears where this
checkout and machine can make it: its precision must be one ``maskserve export`` offers, its
runtime a backend that is installed, and bf16 a CPU with bf16 instructions; the others are
listed in the report with the reason they did not run. So the rows for bf16, static int8 and
OpenVINO come in by themselves when the branches that add them are merged (see
/work/notes/precision-contract.md for the flags and bundle.json fields they use).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.machine import cpu_flags

RUNTIME_SHORT = {"onnxruntime": "ort", "openvino": "ov"}


@dataclass(frozen=True)
class Variant:
    """``precision``: the value of ``maskserve export --precision`` (``int8`` is dynamic);
    ``runtime``: the ``MASKSERVE_BACKEND`` that runs it."""

    precision: str
    runtime: str

    @property
    def name(self) -> str:
        return f"maskserve {RUNTIME_SHORT.get(self.runtime, self.runtime)} {self.precision}"

    @property
    def compute(self) -> str:
        """The arithmetic of the body's GEMMs: fp32, bf16 or int8."""
        return "int8" if self.precision.startswith("int8") else self.precision

    @property
    def reduced(self) -> bool:
        return self.precision != "fp32"


# Report order: the default runtime first, FP32 first within a runtime. ONNX Runtime has no bf16
# CPU kernels (precision contract), so bf16 exists on OpenVINO only.
ALL_VARIANTS = (
    Variant("fp32", "onnxruntime"),
    Variant("int8", "onnxruntime"),
    Variant("int8-static", "onnxruntime"),
    Variant("fp32", "openvino"),
    Variant("bf16", "openvino"),
    Variant("int8", "openvino"),
    Variant("int8-static", "openvino"),
)


def export_precisions() -> set[str]:
    """The ``--precision`` choices this checkout's exporter has (fp32 and dynamic int8 before
    the precision branch)."""
    from maskserve.export import pipeline

    choices = getattr(pipeline, "PRECISION_CHOICES", None)
    return set(choices) if choices is not None else {"fp32", "int8"}


def runtime_problem(runtime: str) -> str | None:
    """Why ``runtime`` cannot run here, or None."""
    if runtime == "onnxruntime":
        return None
    if runtime == "openvino":
        if importlib.util.find_spec("maskserve.service.backends.ov") is None:
            return "this checkout has no OpenVINO backend (issue 15 item 4, branch openvino)"
        if importlib.util.find_spec("openvino") is None:
            return "openvino is not installed (pip install 'maskserve[openvino]')"
        return None
    return f"unknown runtime {runtime!r}"


def variant_problem(variant: Variant) -> str | None:
    """Why ``variant`` cannot be benchmarked here, or None."""
    if variant.precision not in export_precisions():
        return f"this checkout's exporter has no --precision {variant.precision} (issue 15 item 3, branch precision)"
    if variant.precision == "bf16" and not cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        return "this CPU has no bf16 instructions (avx512_bf16 or amx_bf16)"
    return runtime_problem(variant.runtime)


def select(names: Sequence[str] | None) -> tuple[list[Variant], dict[Variant, str]]:
    """The variants to run (``names``: ``runtime:precision`` or ``precision``, e.g. ``ort:fp32``;
    None: all) and, for the others asked for, why not."""
    wanted = [v for v in ALL_VARIANTS if names is None or _matches(v, names)]
    if names is not None and not wanted:
        raise SystemExit(f"--variants {','.join(names)} matches none of {[_key(v) for v in ALL_VARIANTS]}")
    problems = {v: p for v in wanted if (p := variant_problem(v)) is not None}
    return [v for v in wanted if v not in problems], problems


def _key(variant: Variant) -> str:
    return f"{RUNTIME_SHORT[variant.runtime]}:{variant.precision}"


def _matches(variant: Variant, names: Sequence[str]) -> bool:
    return any(name in (_key(variant), variant.precision, RUNTIME_SHORT[variant.runtime]) for name in names)


def export_options(checkpoint: Path, out: Path, precision: str, extra: dict[str, Any]) -> Any:
    """``ExportOptions`` for ``precision`` in this checkout's exporter: ``--precision`` where it
    has one, the ``--int8`` flag before."""
    from maskserve.export.pipeline import ExportOptions

    fields = {f.name for f in dataclasses.fields(ExportOptions)}
    options: dict[str, Any] = {"model": str(checkpoint), "out": out, "force": True, **extra}
    if "precision" in fields:
        options["precision"] = precision
    elif precision == "int8":
        options["int8"] = True
    elif precision != "fp32":
        raise ValueError(f"this exporter has no precision {precision}")
    return ExportOptions(**{k: v for k, v in options.items() if k in fields})


def ensure_bundle(checkpoint: Path, out: Path, precision: str, extra: dict[str, Any]) -> Path:
    """The bundle of ``checkpoint`` at ``precision`` in ``out``, exported unless one that loads
    (same schema) and was made from the same arguments is there. Raises what the export raises
    (e.g. an accuracy gate that refuses the precision)."""
    from maskserve.bundle import Bundle, BundleError
    from maskserve.export.pipeline import run_export

    marker = out / "bench-export.json"
    arguments = {"checkpoint": str(checkpoint.resolve()), "precision": precision, **extra}
    wanted = json.loads(json.dumps(arguments, default=str))  # canvases as their repr
    try:
        Bundle.load(out)
        if json.loads(marker.read_text()) == wanted:
            return out
    except (BundleError, OSError, ValueError):
        pass  # missing, of an older schema, or made from other arguments
    print(f"exporting {checkpoint.name} at {precision} into {out}", file=sys.stderr)
    run_export(export_options(checkpoint, out, precision, extra), log=lambda m: print(f"  {m}", file=sys.stderr))
    marker.write_text(json.dumps(wanted, indent=1))
    return out
