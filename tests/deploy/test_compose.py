"""docker-compose.yml (and with docker/compose.gpu.yml merged) against the compose-spec schema,
and its agreement with the images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.deploy import compose, dockerfile
from tests.deploy.tools import DOCKERFILES, ROOT, output, run, tool

SCHEMA = ROOT / "deploy" / "schemas" / "compose-spec.json"


def check_schema(document: dict, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(document))
    result = run([tool("check-jsonschema"), "--schemafile", str(SCHEMA), str(path)], timeout=60)
    assert result.returncode == 0, output(result)


def test_schema_rejects_a_misspelt_key(tmp_path: Path) -> None:
    """The vendored schema is strict: without this, a passing validation would prove nothing."""
    bad = compose.load(compose.BASE)
    bad["services"]["maskserve"]["helthcheck"] = bad["services"]["maskserve"].pop("healthcheck")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    result = run([tool("check-jsonschema"), "--schemafile", str(SCHEMA), str(path)], timeout=60)
    assert result.returncode != 0, output(result)


def test_cpu_compose_matches_schema(tmp_path: Path) -> None:
    check_schema(compose.load(compose.BASE), tmp_path, "cpu")


def test_gpu_compose_matches_schema(tmp_path: Path) -> None:
    check_schema(compose.load(compose.GPU_OVERRIDE), tmp_path, "override")
    merged = compose.merged_gpu()
    check_schema(merged, tmp_path, "gpu")
    service = merged["services"]["maskserve"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    env = compose.environment_dict(service["environment"])
    assert env["MASKSERVE_BACKEND"] == "auto"
    assert any(str(v).endswith(":" + str(env["MASKSERVE_ENGINE_CACHE"])) for v in service["volumes"])


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_healthcheck_is_the_images(flavour: str) -> None:
    spec = compose.load(compose.BASE) if flavour == "cpu" else compose.merged_gpu()
    check = spec["services"]["maskserve"]["healthcheck"]
    options, command = dockerfile.parse(DOCKERFILES[flavour])[-1].healthcheck()
    assert check["test"] == ["CMD", *command]
    for option in ("interval", "timeout", "start_period", "retries"):
        assert str(check[option]) == options[option.replace("_", "-")], option


def test_stack_wiring() -> None:
    spec = compose.load(compose.BASE)
    services = spec["services"]
    assert set(services) == {"maskserve", "prometheus", "grafana"}
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert "maskserve" in services["prometheus"]["depends_on"]
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
        assert "healthcheck" in service or name == "grafana"
    env = compose.environment_dict(services["maskserve"]["environment"])
    assert services["maskserve"]["ports"] == [f"{env['MASKSERVE_PORT']}:{env['MASKSERVE_PORT']}"]
    # The drain fits in the stop grace period (docker sends SIGKILL after it).
    grace = int(str(services["maskserve"]["stop_grace_period"]).rstrip("s"))
    assert grace > float(str(env["MASKSERVE_DRAIN_TIMEOUT_S"]))
    # Mounted config paths exist in the repo.
    for service in services.values():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and volume.startswith("./"):
                assert (ROOT / volume.split(":")[0]).exists(), volume
            elif isinstance(volume, dict) and volume["type"] == "bind":
                assert (ROOT / compose.interpolate(volume["source"], {})).is_dir(), volume


def test_api_key_override(tmp_path: Path) -> None:
    """docker/compose.apikey.yml: the key reaches maskserve as a secret file, and Prometheus scrapes
    with the same secret through its own config (which promtool must accept: test_observability)."""
    override = compose.load(compose.APIKEY_OVERRIDE)
    check_schema(override, tmp_path, "apikey-override")
    merged = compose.merge(compose.load(compose.BASE), override)
    check_schema(merged, tmp_path, "apikey")
    services = merged["services"]
    env = compose.environment_dict(services["maskserve"]["environment"])
    secret = "maskserve_api_key"
    assert env["MASKSERVE_API_KEY_FILE"] == f"/run/secrets/{secret}"
    assert "MASKSERVE_API_KEY" not in env, "the key itself must not be in the environment"
    assert secret in services["maskserve"]["secrets"] and secret in services["prometheus"]["secrets"]
    config = services["prometheus"]["command"][0].split("=", 1)[1]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / Path(config).name).read_text())["scrape_configs"][0]
    assert scrape["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    assert "MASKSERVE_API_KEY_FILE" not in compose.environment_dict(
        compose.load(compose.BASE)["services"]["maskserve"]["environment"]
    ), "off by default"
