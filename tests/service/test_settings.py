"""Settings: env vars, bounds, and the CLI's one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from maskserve.service.settings import Settings
from tests.conftest import run_cli


def test_every_field_is_an_env_var_and_documented(monkeypatch: pytest.MonkeyPatch, swin_bundle: Path) -> None:
    monkeypatch.setenv("MASKSERVE_BUNDLE", str(swin_bundle))
    monkeypatch.setenv("MASKSERVE_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("MASKSERVE_CANVASES", "128x128, 128x192")
    settings = Settings()
    assert settings.bundle == swin_bundle and settings.max_batch_size == 3
    assert [canvas.hw for canvas in settings.canvases or []] == [(128, 128), (128, 192)]
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"MASKSERVE_{name.upper()}" in readme, f"MASKSERVE_{name.upper()} is not in the README"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_delay_ms": -1}, "max_delay_ms"),
        ({"canvases": "100x128"}, "multiple of 32"),
        ({"canvases": "big"}, "HxW"),
        ({"port": 70000}, "port"),
        ({"provider": "rocm"}, "provider"),
        ({"bundle": "/nonexistent"}, "not found"),
    ],
)
def test_bounds_are_validated(swin_bundle: Path, overrides: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        Settings(**{"bundle": swin_bundle, **overrides})


def test_serve_cli_errors_are_one_line(tmp_path: Path, swin_bundle: Path) -> None:
    result = run_cli("serve", "--bundle", str(tmp_path / "missing"), timeout=60)
    assert result.returncode == 2 and result.stderr.strip().startswith("error:")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "bundle.json").write_text("{}")
    (tmp_path / "junk" / "model.onnx").write_bytes(b"")
    result = run_cli("serve", "--bundle", str(tmp_path / "junk"), timeout=60)
    assert result.returncode == 2 and "invalid" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_label_studio_settings_read_label_studios_own_names(monkeypatch: pytest.MonkeyPatch, swin_bundle: Path) -> None:
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://label-studio:8080")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret-token")
    monkeypatch.setenv("MASKSERVE_LABELSTUDIO_ALLOWED_HOSTS", "images.example.com, Files.Example.com:9000,[::1]:8081")
    settings = Settings(bundle=swin_bundle)
    assert str(settings.labelstudio_url) == "http://label-studio:8080/"
    assert (
        settings.labelstudio_api_key is not None and settings.labelstudio_api_key.get_secret_value() == "secret-token"
    )
    assert "secret-token" not in repr(settings)
    assert settings.labelstudio_allowed_hosts == ["images.example.com", "files.example.com:9000", "[::1]:8081"]
    monkeypatch.setenv("MASKSERVE_LABELSTUDIO_URL", "https://ls.internal")  # ours wins
    assert str(Settings(bundle=swin_bundle).labelstudio_url) == "https://ls.internal/"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"labelstudio_allowed_hosts": "http://images.example.com"}, "not a host name or host:port"),
        ({"labelstudio_allowed_hosts": "user@images.example.com"}, "not a host name or host:port"),
        ({"labelstudio_allowed_hosts": "images.example.com/path"}, "not a host name or host:port"),
        ({"model_name": "{{.Name}}"}, "model_name"),  # KServe's template, unrendered outside KServe
        ({"model_name": "a/b"}, "model_name"),
        ({"labelstudio_format": "rle"}, "labelstudio_format"),
    ],
)
def test_protocol_settings_are_validated(swin_bundle: Path, overrides: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        Settings(**{"bundle": swin_bundle, **overrides})


def test_panoptic_rule_defaults_to_maskformer(swin_bundle: Path) -> None:
    assert Settings(bundle=swin_bundle).panoptic_rule == "maskformer"
    for rule in ("maskformer", "mask2former", "transformers"):
        assert Settings(bundle=swin_bundle, panoptic_rule=rule).panoptic_rule == rule


def test_the_old_paper_rule_fails_at_start_up_naming_the_new_ones(swin_bundle: Path) -> None:
    with pytest.raises(ValidationError, match="'paper' is no longer a panoptic rule"):
        Settings(bundle=swin_bundle, panoptic_rule="paper")
    env = {**os.environ, "MASKSERVE_PANOPTIC_RULE": "paper"}
    result = subprocess.run(
        [sys.executable, "-m", "maskserve.cli", "serve", "--bundle", str(swin_bundle)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: setting panoptic_rule: ")
    assert all(f"'{rule}'" in lines[0] for rule in ("maskformer", "mask2former", "transformers")), lines[0]
