"""The CPU image's command, run here: its ENTRYPOINT + CMD with its ENV and the compose service's
environment, the project venv's `maskserve` standing in for the image's. The image's own
HEALTHCHECK command must turn healthy, and SIGTERM must end it with exit 0 (a clean drain)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.deploy import compose, dockerfile
from tests.deploy.tools import DOCKERFILES, overlay_docs, settings

IMAGE_VENV_BIN = "/opt/venv/bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def container_environment(bundle: Path, port: int) -> dict[str, str]:
    """The environment `docker compose up` gives the process, adapted to run here."""
    runtime = dockerfile.parse(DOCKERFILES["cpu"])[-1]
    # No MASKSERVE_* from the developer's shell: only what the image and compose set.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKSERVE_")}
    local_bin = str(Path(sys.executable).parent)
    for key, value in runtime.env().items():
        env[key] = value.replace(IMAGE_VENV_BIN, local_bin).replace("$PATH", os.environ.get("PATH", ""))
    service = compose.load(compose.BASE)["services"]["maskserve"]
    for key, value in compose.environment_dict(service.get("environment")).items():
        if value is not None:  # a bare name passes the (cleared) shell variable through: unset
            env[key] = compose.interpolate(value, {})
    env.update(MASKSERVE_HOST="127.0.0.1", MASKSERVE_PORT=str(port), MASKSERVE_BUNDLE=str(bundle))
    return env


def test_image_command_serves_turns_healthy_and_drains_on_sigterm(demo_bundle_dir: Path, tmp_path: Path) -> None:
    runtime = dockerfile.parse(DOCKERFILES["cpu"])[-1]
    command = runtime.command()
    options, healthcheck = runtime.healthcheck()
    port = free_port()
    env = container_environment(demo_bundle_dir, port)
    executable = Path(sys.executable).parent / command[0]
    assert executable.is_file(), f"{executable} missing: `pip install -e .` provides the {command[0]} console script"
    assert env["PATH"].split(os.pathsep)[0] == str(executable.parent)

    log = (tmp_path / "server.log").open("w+")
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    try:
        # Docker runs the check every `interval` during `start-period`; here, every 0.5 s.
        deadline = time.monotonic() + min(120.0, float(options["start-period"].rstrip("s")))
        while True:
            assert process.poll() is None, f"exited with {process.returncode} before healthy:\n{read(log)}"
            probe = subprocess.run(healthcheck, env=env, cwd=tmp_path, capture_output=True, timeout=10, check=False)
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, f"HEALTHCHECK never passed:\n{probe.stderr!r}\n{read(log)}"
            time.sleep(0.5)

        base = f"http://127.0.0.1:{port}"
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
            with urllib.request.urlopen(base + path, timeout=5) as response:
                assert response.status == 200, path
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            assert b"maskserve_model_info" in response.read()

        process.send_signal(signal.SIGTERM)
        drain = float(env["MASKSERVE_DRAIN_TIMEOUT_S"])
        returncode = process.wait(timeout=drain + 10)
        assert returncode == 0, f"exit {returncode} after SIGTERM:\n{read(log)}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()


def read(log) -> str:  # type: ignore[no-untyped-def]
    log.flush()
    log.seek(0)
    return log.read()[-5000:]


@pytest.mark.parametrize("source", ["compose-cpu", "compose-gpu", "k8s-cpu", "k8s-gpu"])
def test_deployed_settings_are_valid(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MASKSERVE_* that the image, compose or a ConfigMap sets is a setting the server accepts
    (the bundle aside: any directory passes Settings' check)."""
    from maskserve.service.settings import Settings

    if source == "compose-cpu":
        env = container_environment(tmp_path, 8000)
    elif source == "compose-gpu":
        service = compose.merged_gpu()["services"]["maskserve"]
        env = dockerfile.parse(DOCKERFILES["gpu"])[-1].env()
        env.update(
            {k: compose.interpolate(v, {}) for k, v in compose.environment_dict(service["environment"]).items() if v}
        )
    else:
        env = settings(overlay_docs(source.removeprefix("k8s-")))
    for key in [k for k in os.environ if k.startswith("MASKSERVE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("MASKSERVE_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASKSERVE_BUNDLE", str(tmp_path))
    Settings()
