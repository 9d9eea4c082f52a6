"""The GPU benchmark's transfer steps for real: wheels cut into pieces, sent, checked, joined and
installed with pip into a target folder, through the CLI a device call runs. A damaged or
missing piece is a one-line error with a non-zero exit, never a traceback."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.gpu import pieces

ROOT = Path(__file__).resolve().parents[2]


def _wheel(folder: Path, name: str, payload: bytes) -> Path:
    """A minimal valid pure-Python wheel: ``name`` with ``__version__`` and a data file."""
    files = {
        f"{name}/__init__.py": b'__version__ = "1.0"\n',
        f"{name}/payload.bin": payload,
        f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for path, data in files.items()
    ]
    files[f"{name}-1.0.dist-info/RECORD"] = ("\n".join([*record, f"{name}-1.0.dist-info/RECORD,,"]) + "\n").encode()
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    folders = ["--work", str(tmp / "work"), "--pieces", str(tmp / "carried"), "--stash", str(tmp / "stash")]
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--rehearse", *folders, "--site", str(tmp / "site"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OUT": str(tmp / "out")},
        timeout=300,
        check=False,
    )


def _fails_in_one_line(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert words in last, result.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two wheels (one of incompressible bytes) as pieces of 64 KiB, and their pristine copy."""
    tmp = tmp_path_factory.mktemp("transfer")
    wheels = tmp / "wheels"
    wheels.mkdir()
    _wheel(wheels, "gpuprobe_alpha", os.urandom(200_000))
    _wheel(wheels, "gpuprobe_beta", b"compressible " * 20_000)
    result = _cli(tmp, "pieces", "--wheels", str(wheels), "--no-download", "--piece-bytes", str(64 << 10))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["pieces"] >= 3
    return tmp


def test_pieces_join_back_into_the_wheels_bit_for_bit(built: Path, tmp_path: Path) -> None:
    manifest = pieces.load_manifest(built / "carried")
    assert all(piece["bytes"] <= 64 << 10 for piece in manifest["pieces"])
    wheels = pieces.unpack(built / "carried", manifest, tmp_path / "joined")
    # Every built wheel comes back (an empty list would pass the loop below).
    assert sorted(wheel.name for wheel in wheels) == sorted(path.name for path in (built / "wheels").glob("*.whl"))
    assert len(wheels) == 2
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as stored, zipfile.ZipFile(built / "wheels" / wheel.name) as original:
            assert all(info.compress_type == zipfile.ZIP_STORED for info in stored.infolist())
            assert [i.filename for i in stored.infolist()] == [i.filename for i in original.infolist()]
            assert all(stored.read(name) == original.read(name) for name in original.namelist())


def test_send_then_assemble_installs_and_refuses_damage(built: Path, tmp_path: Path) -> None:
    tmp = tmp_path
    (tmp / "carried").mkdir()
    for path in (built / "carried").iterdir():
        (tmp / "carried" / path.name).write_bytes(path.read_bytes())
    count = len(pieces.load_manifest(tmp / "carried")["pieces"])

    damaged = tmp / "carried" / "piece-02"
    good = damaged.read_bytes()
    damaged.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    _fails_in_one_line(_cli(tmp, "send", "2"), "piece 2 arrived damaged")
    _fails_in_one_line(_cli(tmp, "send", str(count + 1)), f"there is no piece {count + 1}")
    damaged.write_bytes(good)

    first = _cli(tmp, "send", "1", "2")
    assert first.returncode == 0, first.stderr
    assert json.loads((tmp / "out" / "send-1-2.json").read_text())["present"] == [1, 2]
    _fails_in_one_line(_cli(tmp, "assemble", "--imports", "gpuprobe_alpha"), "are not in")  # the rest unsent

    rest = _cli(tmp, "send", *map(str, range(3, count + 1)))
    assert rest.returncode == 0, rest.stderr
    stashed = tmp / "stash" / "piece-01"
    saved = stashed.read_bytes()
    stashed.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
    _fails_in_one_line(_cli(tmp, "assemble", "--imports", "gpuprobe_alpha"), "piece 1 in")
    stashed.write_bytes(saved)

    done = _cli(tmp, "assemble", "--imports", "gpuprobe_alpha", "gpuprobe_beta")
    assert done.returncode == 0, done.stderr
    site = tmp / "site"
    assert (site / "gpuprobe_alpha" / "payload.bin").stat().st_size == 200_000
    assert (site / "maskserve" / "service" / "segmenter.py").is_file()  # laid out as the wheel is
    report = json.loads((tmp / "out" / "assemble.json").read_text())
    assert report["imports"]["gpuprobe_beta"][1].startswith(str(site))
    again = _cli(tmp, "assemble", "--imports", "gpuprobe_alpha", "maskserve")
    assert again.returncode == 0, again.stderr
    assert "wheels already installed" in again.stderr
    assert json.loads((tmp / "out" / "assemble.json").read_text())["imports"]["maskserve"][1].startswith(str(site))
