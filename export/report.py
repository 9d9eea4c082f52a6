"""The verification report: every check of an export, its table, its summary for
``bundle.json``, and the one line (plus a hint) that a failure is reported as."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from maskserve.errors import first_line

# Checks of these outputs compare the graph's raw logits with transformers' forward.
LOGITS = ("class_logits", "mask_logits")
# `Check.output` of a case whose graph did not run at all.
GRAPH = "(graph)"
# `Check.output` of the checks on a user's image (`--verify-images`).
IMAGE_OUTPUTS = ("semantic", "panoptic")


@dataclass
class Check:
    case: str  # a canvas ("512x704") or an image on its canvas ("cat.jpg@512x704")
    output: str
    metric: str
    value: float
    limit: float | None
    higher_is_better: bool
    detail: str = ""

    @property
    def ok(self) -> bool:
        if self.limit is None:  # reported, not gated
            return True
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def describe(self) -> str:
        if self.output == GRAPH:
            return f"onnxruntime stopped in {self.detail}"
        op = "<" if self.higher_is_better else ">"
        return f"{self.output} {self.metric} {self.value:.6g} {op} {self.limit:.6g}"


@dataclass
class Report:
    checks: list[Check]
    providers: list[str]
    context: dict[str, object] = field(default_factory=dict)  # e.g. the trace canvas, for the summary

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def failure(self) -> Check | None:
        """The first failing check, in the order the cases ran (canvases, then images)."""
        return next((check for check in self.checks if not check.ok), None)

    def table(self) -> str:
        rows = [f"{'case':<26} {'output':<16} {'metric':<20} {'value':>12} {'limit':>12}  ok"]
        for c in self.checks:
            op = ">=" if c.higher_is_better else "<="
            limit = f"{op} {c.limit:.4g}" if c.limit is not None else "(report)"
            limit = f"{limit:>12}"
            verdict = "yes" if c.ok else "NO"
            row = (
                f"{c.case:<26} {c.output:<16} {c.metric:<20} {c.value:>12.6g} {limit}  "
                f"{verdict if c.limit is not None else '-'}"
            )
            rows.append(row + (f"  {c.detail}" if c.detail and c.output != GRAPH else ""))
            if c.output == GRAPH:
                rows.append(f"{'':<26} {c.detail}")
        return "\n".join(rows)

    def summary(self) -> dict[str, object]:
        worst: dict[str, float] = {}
        for c in self.checks:
            key = f"{c.output}.{c.metric}"
            worst[key] = (
                min(worst.get(key, c.value), c.value) if c.higher_is_better else max(worst.get(key, c.value), c.value)
            )
        return {
            "passed": self.ok,
            "providers": self.providers,
            **self.context,
            "cases": list(dict.fromkeys(c.case for c in self.checks)),
            "worst": worst,
            "checks": [asdict(c) for c in self.checks],
        }

    def failure_line(self) -> str:
        """One line: where verification failed first and on what."""
        failed = self.failure()
        if failed is None:
            return "verification passed"
        where = "image" if failed.output in IMAGE_OUTPUTS else "canvas"
        return f"verification failed at {where} {failed.case}: {failed.describe()}; no bundle was written"

    def hint(self, trace: str) -> str:
        """One line on what the first failure most likely means and what to do."""
        failed = self.failure()
        if failed is None:
            return ""
        canvases = [c.case for c in self.checks if c.output not in IMAGE_OUTPUTS]
        failing = {c.case for c in self.checks if not c.ok and c.output not in IMAGE_OUTPUTS}
        specialized = (
            f"hint: the graph runs at some canvases and not at others: a shape-dependent Python branch in the "
            f"model's code was baked in at the trace canvas {trace}; export without the failing canvases, or "
            f"report the backbone to maskserve"
        )
        if failed.output == GRAPH:
            return specialized
        if failed.output in LOGITS:
            if failing >= set(canvases):
                return (
                    "hint: the graph disagrees with PyTorch at every canvas, so it is not a shape specialization: "
                    "try another --opset, or report the model to maskserve"
                )
            return specialized
        if failed.output in IMAGE_OUTPUTS:
            return (
                "hint: the graph matches PyTorch on noise but decides differently on this image; pixels within "
                "float rounding of a tie flip either way, so look at where the answers differ before trusting it"
            )
        return (
            "hint: the fused head disagrees with its PyTorch reference on the graph's own logits: a maskserve "
            "bug; please report it with the table above"
        )


_ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']+)'")
# ORT prefixes some messages with its source file and function, and an assertion that failed.
_SOURCE_PREFIX = re.compile(r"^/\S+:\d+ [^(]*\([^)]*\)\s*([^.]* was false\.\s*)?")


def onnxruntime_failure(exc: BaseException) -> str:
    """``"Reshape node 'node_view_81': <reason>"`` from an ONNX Runtime error, else its first line."""
    text = first_line(exc, limit=2000)
    node = _ORT_NODE.search(text)
    if node is None:
        return first_line(exc)
    reason = text.split("Status Message:", 1)[-1].strip() if "Status Message:" in text else ""
    reason = _SOURCE_PREFIX.sub("", reason)
    return f"{node.group(1)} node '{node.group(2)}'" + (f": {reason[:200]}" if reason else "")
