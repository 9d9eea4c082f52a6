"""k8s/kserve: the KServe manifests render, pass the vendored strict subsets of KServe's CRD schemas
(deploy/schemas/kserve-*.subset.json), and keep maskserve's container contract: port, bundle path,
protocol, model format, model name, health route, non-root (docs/deploy.md, "KServe"); the
documented calls work against a real server configured as the container is. No cluster is involved."""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from maskserve.bundle import DEFAULT_BUNDLE, SCHEMA_VERSION
from maskserve.service.app import create_app
from maskserve.service.settings import Settings
from tests.deploy import dockerfile
from tests.deploy.tools import DOCKERFILES, IMAGE_UID, ROOT, output, run, tool
from tests.service.server import running_server

RUNTIME_DIR = "k8s/kserve"  # the ClusterServingRuntime and an InferenceService that uses it
CUSTOM_DIR = "k8s/kserve/custom"  # the same InferenceService with its own container
SCHEMAS = ROOT / "deploy" / "schemas"
# ServingRuntime and ClusterServingRuntime share one schema (kserve_subset.py checks they are equal).
SCHEMA_FILES = {
    "ClusterServingRuntime": SCHEMAS / "kserve-servingruntime-v1alpha1.subset.json",
    "ServingRuntime": SCHEMAS / "kserve-servingruntime-v1alpha1.subset.json",
    "InferenceService": SCHEMAS / "kserve-inferenceservice-v1beta1.subset.json",
}
# pkg/constants/constants.go at the vendored commit.
CONTAINER_NAME = "kserve-container"  # InferenceServiceContainerName
MODEL_DIR = "/mnt/models"  # DefaultModelLocalMountPath: where the storage initializer puts storageUri
HTTP_PORT = 8080  # InferenceServiceDefaultHttpPort
# Open Inference Protocol health routes (docs/deploy.md); readiness must be the "ready" one.
V2_READY = "/v2/health/ready"


@functools.cache
def rendered(directory: str) -> str:
    result = run([tool("kubectl"), "kustomize", directory], timeout=60)
    assert result.returncode == 0, output(result)
    return result.stdout


def docs(directory: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered(directory)) if doc]


def one(found: list[dict], kind: str) -> dict:
    (doc,) = [d for d in found if d["kind"] == kind]
    return doc


def runtime() -> dict:
    return one(docs(RUNTIME_DIR), "ClusterServingRuntime")


def runtime_container() -> dict:
    (container,) = runtime()["spec"]["containers"]
    return container


def custom_container() -> dict:
    (container,) = one(docs(CUSTOM_DIR), "InferenceService")["spec"]["predictor"]["containers"]
    return container


def container_and_volumes(which: str) -> tuple[dict, list[dict]]:
    """The maskserve container and its pod's volumes: in the runtime, or in the custom predictor."""
    if which == "runtime":
        return runtime_container(), runtime()["spec"]["volumes"]
    return custom_container(), one(docs(CUSTOM_DIR), "InferenceService")["spec"]["predictor"]["volumes"]


def env(container: dict) -> dict[str, str]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate env: {names}"
    return {e["name"]: e["value"] for e in container["env"]}


def validate(objects: list[dict], tmp_path: Path) -> list[tuple[str, dict]]:
    """check-jsonschema each object against its kind's schema; (output, object) for each failure."""
    failures = []
    for index, obj in enumerate(objects):
        path = tmp_path / f"{index}-{obj['kind']}.json"
        path.write_text(json.dumps(obj))
        result = run([tool("check-jsonschema"), "--schemafile", str(SCHEMA_FILES[obj["kind"]]), str(path)])
        if result.returncode != 0:
            failures.append((output(result), obj))
    return failures


def test_renders_the_documented_objects() -> None:
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs(RUNTIME_DIR)]
    assert kinds == [("ClusterServingRuntime", "maskserve"), ("InferenceService", "maskformer")]
    assert [(d["kind"], d["metadata"]["name"]) for d in docs(CUSTOM_DIR)] == [("InferenceService", "maskformer")]
    # Cluster-scoped: a namespace on it would be wrong. The InferenceServices take `apply -n`.
    for doc in docs(RUNTIME_DIR) + docs(CUSTOM_DIR):
        assert "namespace" not in doc["metadata"], doc["kind"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "maskserve"


def test_manifests_match_vendored_schemas(tmp_path: Path) -> None:
    failures = validate(docs(RUNTIME_DIR) + docs(CUSTOM_DIR), tmp_path)
    assert not failures, "\n".join(text for text, _ in failures)


def _rename(obj: dict, path: str, new: str) -> None:
    *parents, last = path.split(".")
    for key in parents:
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    obj[new] = obj.pop(last)


MISTAKES: dict[str, tuple[str, str, Callable[[dict], None], str]] = {
    # name: (directory, kind of the object to break there, the mistake, text the error must contain)
    "protocolVersion instead of protocolVersions": (
        RUNTIME_DIR,
        "ClusterServingRuntime",
        lambda d: _rename(d, "spec.protocolVersions", "protocolVersion"),
        "'protocolVersion' was unexpected",
    ),
    "modelFormat.nmae": (
        RUNTIME_DIR,
        "InferenceService",
        lambda d: _rename(d, "spec.predictor.model.modelFormat.name", "nmae"),
        "'nmae' was unexpected",
    ),
    "storageUri is not a string": (
        RUNTIME_DIR,
        "InferenceService",
        lambda d: d["spec"]["predictor"]["model"].update(storageUri=42),
        "42 is not of type 'string'",
    ),
    "readinessProbe.httpGet.pth in a custom container": (
        CUSTOM_DIR,
        "InferenceService",
        lambda d: _rename(d, "spec.predictor.containers.0.readinessProbe.httpGet.path", "pth"),
        "'pth' was unexpected",
    ),
    "a predictor field outside the vendored subset": (
        CUSTOM_DIR,
        "InferenceService",
        lambda d: d["spec"]["predictor"].update(sklearn={"storageUri": "pvc://x/y"}),
        "'sklearn' was unexpected",
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_vendored_schemas_reject_a_mistake(mistake: str, tmp_path: Path) -> None:
    """A passing validation means something: strict schemas catch misspelt and mistyped fields."""
    directory, kind, mutate, message = MISTAKES[mistake]
    bad = copy.deepcopy(one(docs(directory), kind))
    mutate(bad)
    failures = validate([bad], tmp_path)
    assert len(failures) == 1, f"{mistake}: accepted"
    assert message in failures[0][0], failures[0][0]


def test_vendored_schemas_name_their_source() -> None:
    assert (SCHEMAS / "LICENSE.kserve").read_text().lstrip().startswith("Apache License")
    for path in set(SCHEMA_FILES.values()):
        schema = json.loads(path.read_text())
        assert re.search(r"kserve/kserve config/crd/full/\S+ at [0-9a-f]{40} ", schema["description"]), path


def test_runtime_serves_v2_for_the_model_format() -> None:
    spec = runtime()["spec"]
    assert spec["protocolVersions"] == ["v2"]
    (model_format,) = spec["supportedModelFormats"]
    assert model_format["name"] == "maskformer-onnx"
    assert model_format["version"] == str(SCHEMA_VERSION)  # the bundle schema version
    assert model_format["autoSelect"] is True
    container = runtime_container()
    assert container["name"] == CONTAINER_NAME  # KServe merges predictor.model into this one
    # KServe renders the container as a Go template over the InferenceService's metadata.
    assert env(container)["MASKSERVE_MODEL_NAME"] == "{{.Name}}"
    assert spec["annotations"] == {"prometheus.kserve.io/port": str(HTTP_PORT), "prometheus.kserve.io/path": "/metrics"}


def test_inference_service_selects_the_runtime() -> None:
    spec = runtime()["spec"]
    model = one(docs(RUNTIME_DIR), "InferenceService")["spec"]["predictor"]["model"]
    formats = {(f["name"], f.get("version")) for f in spec["supportedModelFormats"] if f.get("autoSelect")}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model.get("runtime", runtime()["metadata"]["name"]) == runtime()["metadata"]["name"]
    assert model["protocolVersion"] in spec["protocolVersions"]
    assert re.match(r"(pvc|s3|gs|https?)://\S+/\S+", model["storageUri"]), model["storageUri"]
    assert "containers" not in one(docs(RUNTIME_DIR), "InferenceService")["spec"]["predictor"]


def test_custom_container_is_the_runtime_container() -> None:
    isvc = one(docs(CUSTOM_DIR), "InferenceService")
    container = custom_container()
    assert container["name"] == CONTAINER_NAME  # the one KServe reads STORAGE_URI and PROTOCOL from
    custom_env, runtime_env = env(container), env(runtime_container())
    assert custom_env.pop("PROTOCOL") == "v2"
    assert re.match(r"(pvc|s3|gs|https?)://\S+/\S+", custom_env.pop("STORAGE_URI"))
    # Nothing templates a custom container: the model name is spelt out.
    assert custom_env.pop("MASKSERVE_MODEL_NAME") == isvc["metadata"]["name"]
    runtime_env.pop("MASKSERVE_MODEL_NAME")
    assert custom_env == runtime_env
    for key in ("image", "args", "ports", "resources", "readinessProbe", "securityContext", "volumeMounts"):
        assert container[key] == runtime_container()[key], key
    assert isvc["spec"]["predictor"]["volumes"] == runtime()["spec"]["volumes"]


@pytest.mark.parametrize("which", ["runtime", "custom"])
def test_container_contract(which: str) -> None:
    container, _ = container_and_volumes(which)
    values = env(container)
    image = dockerfile.parse(DOCKERFILES["cpu"])[-1]
    # The image's command, on KServe's port, serving the directory the storage initializer fills.
    assert image.exec_form("ENTRYPOINT") + container["args"] == image.command()
    assert container["image"].endswith(":0.1.0-cpu"), container["image"]
    assert values["MASKSERVE_HOST"] == "0.0.0.0"
    assert int(values["MASKSERVE_PORT"]) == HTTP_PORT
    assert image.env()["MASKSERVE_PORT"] != values["MASKSERVE_PORT"]  # so the override is needed
    assert container["ports"] == [{"containerPort": HTTP_PORT, "protocol": "TCP"}]
    assert values["MASKSERVE_BUNDLE"] == MODEL_DIR
    assert container["readinessProbe"]["httpGet"] == {"path": V2_READY, "port": HTTP_PORT}
    assert "livenessProbe" not in container and "startupProbe" not in container
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys() <= container["resources"]["limits"].keys()
    assert values["MASKSERVE_INTRA_OP_THREADS"] == container["resources"]["requests"]["cpu"]
    # Every MASKSERVE_* name is a setting (a misspelt one would be ignored silently).
    fields = {f"MASKSERVE_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in values if k.startswith("MASKSERVE_")} <= fields


def test_container_env_is_valid_settings() -> None:
    """The custom container's settings, as the server would read them (KServe renders the runtime's
    {{.Name}} to the InferenceService's name first: a DNS label, which the setting accepts)."""
    values = env(custom_container())
    settings = {k.removeprefix("MASKSERVE_").lower(): v for k, v in values.items() if k.startswith("MASKSERVE_")}
    settings["bundle"] = str(DEFAULT_BUNDLE)  # /mnt/models does not exist here
    parsed = Settings(**settings)  # type: ignore[arg-type]
    assert parsed.model_name == one(docs(CUSTOM_DIR), "InferenceService")["metadata"]["name"] == "maskformer"
    assert parsed.port == HTTP_PORT


def test_readiness_path_is_a_server_route() -> None:
    paths = create_app(Settings(bundle=DEFAULT_BUNDLE)).openapi()["paths"]
    assert "get" in paths[V2_READY], paths.keys()


def _documented_v2_calls() -> list[str]:
    """The curl commands of docs/deploy.md's KServe section, continuation lines joined."""
    section = (ROOT / "docs" / "deploy.md").read_text().split("## KServe", 1)[1]
    block = section.split("The Open Inference Protocol routes", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [line.split("  #", 1)[0].strip() for line in lines if line.startswith("curl ")]


def test_documented_v2_calls_work() -> None:
    """docs/deploy.md's curl commands against a real server with the container's model name."""
    name = env(custom_container())["MASKSERVE_MODEL_NAME"]
    commands = _documented_v2_calls()
    assert len(commands) == 6, commands
    with running_server(DEFAULT_BUNDLE, model_name=name) as (url, _):
        answers = []
        for command in commands:
            argv = shlex.split(command.replace("$BASE", url))
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, f"{command}: {done.stderr}"
            answers.append(done.stdout)
    ready, live, server, model, model_ready, infer = answers
    assert ready.strip() == "200" and model_ready.strip() == "200"
    assert json.loads(live) == {"live": True}
    assert "binary_tensor_data" in json.loads(server)["extensions"]
    assert json.loads(model)["name"] == name and json.loads(model)["inputs"][0]["name"] == "IMAGE"
    response = json.loads(infer)
    assert response["model_name"] == name and response["outputs"][0]["name"] == "SEGMENTS"
    assert json.loads(response["outputs"][0]["data"][0])["segments"]


@pytest.mark.parametrize("which", ["runtime", "custom"])
def test_container_runs_as_non_root(which: str) -> None:
    container, volumes = container_and_volumes(which)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == IMAGE_UID == str(security["runAsGroup"])
    assert dockerfile.parse(DOCKERFILES["cpu"])[-1].last("USER") == f"{IMAGE_UID}:{IMAGE_UID}"
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert MODEL_DIR not in mounts  # KServe mounts the model there
    (tmp,) = [v for v in volumes if v["name"] == mounts["/tmp"]]
    assert "emptyDir" in tmp


def test_kustomize_rewrites_the_image() -> None:
    """`kustomize edit set image maskserve=...` (docs/deploy.md) reaches containers in these CRDs."""
    assert runtime_container()["image"] == "registry.example.com/maskserve:0.1.0-cpu"
    assert custom_container()["image"] == "registry.example.com/maskserve:0.1.0-cpu"
