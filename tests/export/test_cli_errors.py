"""Every bad input to ``maskserve export`` is one line on stderr, exit 2, and no bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _assert_clean_failure(result, out: Path, needle: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_nonexistent_path(tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = run_cli("export", "--model", str(tmp_path / "nope"), "--out", str(out))
    _assert_clean_failure(result, out, "checkpoint not found")


def test_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "b"
    _assert_clean_failure(
        run_cli("export", "--model", str(tmp_path / "empty"), "--out", str(out)), out, "no config.json"
    )


def test_non_maskformer_config(tmp_path: Path) -> None:
    ckpt = tmp_path / "bert"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    out = tmp_path / "b"
    _assert_clean_failure(run_cli("export", "--model", str(ckpt), "--out", str(out)), out, "'bert'")


def test_corrupt_weights(tmp_path: Path, checkpoint_factory) -> None:
    import shutil

    ckpt = tmp_path / "corrupt"
    shutil.copytree(checkpoint_factory("resnet"), ckpt)
    (ckpt / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "b"
    _assert_clean_failure(run_cli("export", "--model", str(ckpt), "--out", str(out)), out, "cannot load the weights")


def test_existing_output_without_force(tmp_path: Path, checkpoint_factory) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("export", "--model", str(checkpoint_factory("resnet")), "--out", str(out))
    assert result.returncode == 2 and "already exists" in result.stderr and "--force" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(("flag", "value"), [("--size", ["100", "128"]), ("--canvas", ["96x33"])])
def test_size_not_multiple_of_32(tmp_path: Path, checkpoint_factory, flag: str, value: list[str]) -> None:
    out = tmp_path / "b"
    result = run_cli("export", "--model", str(checkpoint_factory("resnet")), "--out", str(out), flag, *value)
    _assert_clean_failure(result, out, "multiple of 32")


def test_bad_thing_ids(tmp_path: Path, checkpoint_factory) -> None:
    out = tmp_path / "b"
    result = run_cli("export", "--model", str(checkpoint_factory("resnet")), "--out", str(out), "--thing-ids", "0", "9")
    _assert_clean_failure(result, out, "[9]")
