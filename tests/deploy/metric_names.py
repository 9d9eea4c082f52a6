"""Metric names: those service/metrics.py exposes, and those a PromQL expression reads."""

from __future__ import annotations

import functools
import re

# What each metric type puts on /metrics, after the family name (prometheus_client conventions).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
# Words that can stand in PromQL without being a metric and without a following "(".
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"}


@functools.cache
def exposed_metric_names() -> frozenset[str]:
    """Every sample name the server can expose, read off a fresh ``Metrics()`` registry."""
    from maskserve.service.metrics import Metrics

    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return frozenset(names)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects. Strings, label matchers, ranges, grouping clauses
    and Grafana variables are stripped; what is left that is not a function call or keyword is a
    metric name."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b(?:group_left|group_right)\b", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[a-zA-Z_:][\w:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue
        names.add(match.group())
    return names
