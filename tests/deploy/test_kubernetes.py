"""k8s/: both overlays render, validate against the Kubernetes schemas (strict) and checkov, and
keep the invariants that the comments in the manifests explain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.deploy import dockerfile
from tests.deploy.metric_names import exposed_metric_names
from tests.deploy.tools import (
    DOCKERFILES,
    IMAGE_UID,
    KUBERNETES_VERSION,
    OVERLAYS,
    ROOT,
    assert_checkov_clean,
    checkov,
    container,
    one,
    output,
    overlay_docs,
    rendered_overlay,
    run,
    settings,
    tool,
)

# Kinds without a schema in kubernetes-validate (CRDs), and the vendored schema each is checked against.
CRD_SCHEMAS = {"ServiceMonitor": ROOT / "deploy" / "schemas" / "servicemonitor-v1.subset.json"}
ADAPTER_VALUES = ROOT / "k8s" / "prometheus-adapter" / "values.yaml"


def write_rendered(overlay: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered_overlay(overlay))
    return path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_strict(overlay: str, tmp_path: Path) -> None:
    path = write_rendered(overlay, tmp_path)
    result = run([tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)], timeout=120)
    assert result.returncode == 0, output(result)
    lines = result.stdout.splitlines()
    for doc in overlay_docs(overlay):
        if doc["kind"] in CRD_SCHEMAS:
            assert any(line.startswith("WARN") and doc["kind"] in line for line in lines), output(result)
        else:
            name = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
            assert any(line.startswith("INFO") and f"passed for resource {name} against" in line for line in lines), (
                output(result)
            )
    assert not [line for line in lines if line.startswith("WARN") and not any(k in line for k in CRD_SCHEMAS)]


def test_kubernetes_validate_rejects_a_misspelt_field(tmp_path: Path) -> None:
    """--strict is on: a passing validation means something."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(rendered_overlay("cpu").replace("terminationGracePeriodSeconds:", "terminationGracePeriod:"))
    result = run([tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(bad)], timeout=120)
    assert result.returncode != 0, output(result)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_crds_match_vendored_schemas(overlay: str, tmp_path: Path) -> None:
    for doc in overlay_docs(overlay):
        if doc["kind"] in CRD_SCHEMAS:
            path = tmp_path / f"{doc['kind']}.json"
            path.write_text(json.dumps(doc))
            result = run([tool("check-jsonschema"), "--schemafile", str(CRD_SCHEMAS[doc["kind"]]), str(path)])
            assert result.returncode == 0, output(result)


def test_checkov_rendered_manifests(tmp_path: Path) -> None:
    args = ["--framework", "kubernetes"]
    for overlay in OVERLAYS:
        args += ["-f", str(write_rendered(overlay, tmp_path))]
    assert_checkov_clean(checkov(args))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_labels_and_selectors_agree(overlay: str) -> None:
    docs = overlay_docs(overlay)
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "maskserve", doc["kind"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "maskserve", doc["kind"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service")
    selectors = [
        one(docs, "Deployment")["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"],
        one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items(), selector
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    assert (
        one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"]
        == one(docs, "Deployment")["metadata"]["name"]
    )


@pytest.mark.parametrize(("overlay", "min_startup_s"), [("cpu", 300), ("gpu", 1800)])
def test_probes_and_shutdown(overlay: str, min_startup_s: int) -> None:
    docs = overlay_docs(overlay)
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    main = container(docs)
    env = settings(docs)
    (port,) = main["ports"]
    assert port == {"name": "http", "containerPort": int(env["MASKSERVE_PORT"]), "protocol": "TCP"}
    assert env["MASKSERVE_HOST"] == "0.0.0.0"
    probes = {kind: main[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert probes["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert probes["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = probes["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= min_startup_s
    # preStop sleep, then SIGTERM and the drain, all inside the grace period.
    command = main["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > int(command[1]) + float(env["MASKSERVE_DRAIN_TIMEOUT_S"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context_and_image(overlay: str) -> None:
    docs = overlay_docs(overlay)
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    main = container(docs)
    security = main["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert str(security["runAsUser"]) == IMAGE_UID == str(spec["securityContext"]["runAsUser"])
    assert spec["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    image = main["image"]
    assert image.endswith(f":0.1.0-{overlay.split('-')[0]}"), image
    assert {"cpu", "memory"} <= main["resources"]["requests"].keys() <= main["resources"]["limits"].keys()


def test_gpu_overlay_schedules_on_gpus_and_caches_engines() -> None:
    docs = overlay_docs("gpu")
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    main = container(docs)
    env = settings(docs)
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert env["MASKSERVE_BACKEND"] == "auto"
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[env["MASKSERVE_ENGINE_CACHE"]])
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert one(docs, "PersistentVolumeClaim")["metadata"]["name"] == claim
    # The image declares the same cache path.
    assert dockerfile.parse(DOCKERFILES["gpu"])[-1].env()["MASKSERVE_ENGINE_CACHE"] == env["MASKSERVE_ENGINE_CACHE"]
    assert "nvidia.com/gpu" not in container(overlay_docs("cpu"))["resources"]["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_metric_is_served_by_the_adapter(overlay: str) -> None:
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    served = {rule["name"]["as"] for rule in rules}
    for rule in rules:
        series = rule["seriesQuery"].split("{")[0]
        assert series in exposed_metric_names(), series
        assert {"namespace", "pod"} <= rule["resources"]["overrides"].keys()
    hpa = one(overlay_docs(overlay), "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] in served


def test_api_key_component_reads_the_secret_and_the_servicemonitor_sends_it() -> None:
    """k8s/components/apikey: MASKSERVE_API_KEY_FILE names a file of the mounted Secret, the
    ServiceMonitor scrapes with the same key, the probes stay unauthenticated (service/auth.py),
    and the overlays without the component have no key at all (off by default)."""
    from maskserve.service.auth import PROBES

    docs = overlay_docs("cpu-apikey")
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    main = container(docs)
    env = {item["name"]: item["value"] for item in main.get("env", [])}
    path = Path(env["MASKSERVE_API_KEY_FILE"])
    mount = next(m for m in main["volumeMounts"] if m["mountPath"] == str(path.parent))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    secret = volume["secret"]["secretName"]
    assert mount["readOnly"] is True
    auth = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["authorization"]
    assert auth == {"type": "Bearer", "credentials": {"name": secret, "key": path.name}}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"]["path"] in PROBES
    assert "MASKSERVE_API_KEY" not in settings(docs)
    for overlay in ("cpu", "gpu"):
        plain = container(overlay_docs(overlay))
        assert not [item for item in plain.get("env", []) if item["name"].startswith("MASKSERVE_API_KEY")]
