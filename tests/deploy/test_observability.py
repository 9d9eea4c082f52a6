"""deploy/prometheus and deploy/grafana: promtool accepts the config and rules, the alert rules
behave (promtool test rules), and every query reads only metrics that service/metrics.py exposes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy.metric_names import exposed_metric_names, promql_metric_names
from tests.deploy.tools import ROOT, output, run, tool

PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "maskserve.json"
# Not maskserve's: Prometheus' own target health, and kube-state-metrics (MaskserveNotReady).
FOREIGN_METRICS = {"up", "kube_pod_status_ready"}
# Grafana's variables, replaced so that promtool can parse the dashboard's queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$job": ".*", "$instance": ".*"}


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-apikey.yml"])
def test_promtool_check_config(config: str, tmp_path: Path) -> None:
    # Also loads rule_files, which resolve relative to the config. The API-key config names a
    # credentials file that exists only in the container: checked from a copy that points at a
    # local one, so promtool still checks everything.
    shutil.copy(PROMETHEUS / "rules.yml", tmp_path)
    key = tmp_path / "maskserve_api_key"
    key.write_text("test-key\n")
    text = (PROMETHEUS / config).read_text().replace("/run/secrets/maskserve_api_key", str(key))
    (tmp_path / config).write_text(text)
    result = run([tool("promtool"), "check", "config", str(tmp_path / config)])
    assert result.returncode == 0, output(result)
    assert "1 rule files found" in result.stdout, output(result)


def test_promtool_check_rules() -> None:
    result = run([tool("promtool"), "check", "rules", str(PROMETHEUS / "rules.yml")])
    assert result.returncode == 0, output(result)


def test_promtool_rule_unit_tests() -> None:
    result = run([tool("promtool"), "test", "rules", str(PROMETHEUS / "rules_test.yml")])
    assert result.returncode == 0, output(result)


def rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_read_existing_metrics() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    known = exposed_metric_names() | recorded | FOREIGN_METRICS
    for rule in rules():
        names = promql_metric_names(rule["expr"])
        assert names, rule
        assert names <= known, f"{rule.get('record') or rule.get('alert')}: unknown {names - known}"
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert {
        "MaskserveHighLatencyP95",
        "MaskserveRejectingOverload",
        "MaskserveQueueSaturated",
        "MaskserveBatchFailures",
        "MaskserveNotReady",
    } <= alerts


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_dashboard_reads_only_metrics_from_service_metrics() -> None:
    known = exposed_metric_names()
    used: set[str] = set()
    for query in dashboard_queries():
        expr = query.removeprefix("label_values(").rsplit(",", 1)[0] if query.startswith("label_values(") else query
        names = promql_metric_names(expr)
        assert names, query
        assert names <= known, f"{query}: not in service/metrics.py: {names - known}"
        used |= names
    # The panels the operators asked for: traffic, latency end to end and per stage, batching,
    # queue, in-flight, rejections, errors.
    for name in (
        "maskserve_request_duration_seconds_count",
        "maskserve_request_duration_seconds_bucket",
        "maskserve_stage_duration_seconds_bucket",
        "maskserve_batch_size_bucket",
        "maskserve_inferences_total",
        "maskserve_batches_total",
        "maskserve_queue_depth",
        "maskserve_inflight_requests",
        "maskserve_rejected_total",
        "maskserve_batch_failures_total",
    ):
        assert name in used, f"no panel reads {name}"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses each panel query (as a recording rule), with Grafana's variables filled in."""
    exprs = []
    for query in dashboard_queries():
        if query.startswith("label_values("):
            continue
        for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
            query = query.replace(variable, GRAFANA_VARIABLES[variable])
        assert "$" not in query, query
        exprs.append(query)
    path = tmp_path / "dashboard_rules.yml"
    rule_list = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rule_list}]}))
    result = run([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, output(result)


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "maskserve"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel.get("description"), f"{panel['title']}: say what question the panel answers"


@pytest.mark.parametrize("path", sorted((GRAFANA / "provisioning").rglob("*.yml")), ids=lambda p: p.name)
def test_grafana_provisioning_parses(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert data["apiVersion"] == 1
    if "datasources" in data:
        (source,) = data["datasources"]
        assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
        variable = json.loads(DASHBOARD.read_text())["templating"]["list"][0]
        assert variable["current"]["value"] == source["uid"]
    else:
        (provider,) = data["providers"]
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        mounts = compose["services"]["grafana"]["volumes"]
        assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts


def docs_queries() -> list[str]:
    """The PromQL examples in docs/metrics.md: ```promql blocks, one query per paragraph."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    blocks = re.findall(r"```promql\n(.*?)```", text, re.DOTALL)
    return [query.strip() for block in blocks for query in block.split("\n\n") if query.strip()]


def test_metrics_doc_covers_every_metric_and_its_queries_parse(tmp_path: Path) -> None:
    from maskserve.service.metrics import Metrics

    text = (ROOT / "docs" / "metrics.md").read_text()
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "_info" if family.type == "info" else "")
        assert f"`{name}`" in text, f"docs/metrics.md does not describe {name}"
    queries = docs_queries()
    assert len(queries) >= 8
    known = exposed_metric_names()
    for query in queries:
        assert promql_metric_names(query) <= known, query
    path = tmp_path / "docs_rules.yml"
    rule_list = [{"record": f"docs:query_{i}", "expr": query} for i, query in enumerate(queries)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "docs", "rules": rule_list}]}))
    result = run([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, output(result)
