"""Wheels as a few pieces that each fit one device call, with a SHA-256 for everything.

The format: each wheel rewritten as an uncompressed (stored) zip with the same members (a
wheel's RECORD hashes its files, not the archive, so pip installs it alike), the stored wheels
tarred, the tar compressed with the standard library's LZMA (on both machines; the deflated
wheels barely compress, their contents do: the CUDA provider library is 284 MB raw), and the
compressed stream cut into ``piece-NN`` files. ``manifest.json`` holds the SHA-256 of every
piece, of the compressed stream, of the tar and of each stored wheel; ``unpack`` checks them all.

Standard library only: this runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import shutil
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FORMAT = 1
# Preset 9: LZMA2's largest dictionary (64 MiB). With PRESET_EXTREME as well, the build here wrote
# about 4 MB of pieces a minute (two shared cores): most of an hour for the CUDA provider.
STRONGEST = 9


class PiecesError(Exception):
    """A missing or damaged piece, or pieces that do not join into what the manifest says."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise PiecesError(f"no {path}") from None
    except ValueError as exc:
        raise PiecesError(f"{path} is not JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise PiecesError(f"{path} is format {manifest.get('format')!r}, this script reads format {FORMAT}")
    return manifest


def stored_copy(wheel: Path, out: Path) -> None:
    """``wheel`` rewritten with the same members, metadata and order, uncompressed."""
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            copy.external_attr, copy.create_system, copy.compress_type = info.external_attr, info.create_system, 0
            with source.open(info) as member, target.open(copy, "w") as written:
                shutil.copyfileobj(member, written, 1 << 20)


def _tar_member(tar: tarfile.TarFile, path: Path) -> None:
    # Fixed metadata: the same wheels give the same tar, hence the same pieces, wherever built.
    info = tarfile.TarInfo(path.name)
    info.size, info.mtime, info.mode = path.stat().st_size, 0, 0o644
    with path.open("rb") as handle:
        tar.addfile(info, handle)


class _Splitter(io.RawIOBase):
    """A write-only stream cut into ``piece-NN`` files of at most ``size`` bytes, hashing as it goes."""

    def __init__(self, folder: Path, size: int) -> None:
        self.folder, self.size = folder, size
        self.pieces: list[dict[str, Any]] = []
        self.whole = hashlib.sha256()
        self.total = 0
        self._handle: io.BufferedWriter | None = None
        self._digest = hashlib.sha256()
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            if self._handle is None or self._written == self.size:
                self._finish_piece()
                name = f"piece-{len(self.pieces) + 1:02d}"
                self._handle = (self.folder / name).open("wb")
                self.pieces.append({"index": len(self.pieces) + 1, "file": name})
            chunk = view[done : done + self.size - self._written]
            self._handle.write(chunk)
            self._digest.update(chunk)
            self.whole.update(chunk)
            self._written += len(chunk)
            self.total += len(chunk)
            done += len(chunk)
        return len(view)

    def _finish_piece(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self.pieces[-1] |= {"bytes": self._written, "sha256": self._digest.hexdigest()}
        self._handle, self._digest, self._written = None, hashlib.sha256(), 0

    def close(self) -> None:
        self._finish_piece()
        super().close()


class _Compressing(io.RawIOBase):
    """The tar stream's sink: hashed, LZMA-compressed, handed to the splitter."""

    def __init__(self, splitter: _Splitter, preset: int) -> None:
        self.splitter = splitter
        self.compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=preset)
        self.digest = hashlib.sha256()
        self.total = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.digest.update(data)
        self.total += len(data)
        self.splitter.write(self.compressor.compress(bytes(data)))
        return len(data)

    def finish(self) -> None:
        self.splitter.write(self.compressor.flush())
        self.splitter.close()


def build(wheels: Sequence[Path], folder: Path, piece_bytes: int, preset: int = STRONGEST) -> dict[str, Any]:
    """Stored copies of ``wheels``, tarred, LZMA-compressed at ``preset``, cut into pieces of at
    most ``piece_bytes`` in ``folder`` (emptied first). Returns the manifest, also written there."""
    staging = folder / "stored"
    shutil.rmtree(folder, ignore_errors=True)
    staging.mkdir(parents=True)
    entries: list[dict[str, Any]] = []
    for wheel in sorted(wheels, key=lambda path: path.name):
        stored = staging / wheel.name
        stored_copy(wheel, stored)
        entries.append(
            {
                "file": wheel.name,
                "sha256": sha256(stored),
                "bytes": stored.stat().st_size,
                "download_sha256": sha256(wheel),
            }
        )
    splitter = _Splitter(folder, piece_bytes)
    sink = _Compressing(splitter, preset)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for entry in entries:
            _tar_member(tar, staging / entry["file"])
    sink.finish()
    shutil.rmtree(staging)
    manifest = {
        "format": FORMAT,
        "wheels": entries,
        "tar": {"bytes": sink.total, "sha256": sink.digest.hexdigest()},
        "xz": {"bytes": splitter.total, "sha256": splitter.whole.hexdigest(), "preset": preset},
        "piece_limit": piece_bytes,
        "pieces": splitter.pieces,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def fresh(folder: Path, wheels: Sequence[Path], largest: int) -> bool:
    """The pieces in ``folder`` were built from exactly ``wheels`` and none is over ``largest``
    bytes (what still fits a call: the tree grows a little with every commit, and a rebuild
    costs most of an hour here)."""
    try:
        manifest = load_manifest(folder)
    except PiecesError:
        return False
    built = {entry["file"]: entry["download_sha256"] for entry in manifest["wheels"]}
    if (
        built != {wheel.name: sha256(wheel) for wheel in wheels}
        or max(p["bytes"] for p in manifest["pieces"]) > largest
    ):
        return False
    return all(
        (folder / p["file"]).is_file() and (folder / p["file"]).stat().st_size == p["bytes"] for p in manifest["pieces"]
    )


class _Joined(io.RawIOBase):
    """The pieces read back as one stream, hashed as read."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = iter(paths)
        self._handle: io.BufferedReader | None = None
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._handle is None:
                path = next(self._paths, None)
                if path is None:
                    return 0
                self._handle = path.open("rb")
            count = self._handle.readinto(buffer)
            if count:
                self.digest.update(memoryview(buffer)[:count])
                return count
            self._handle.close()
            self._handle = None


class _Decompressing(io.RawIOBase):
    """The joined stream decompressed, the result hashed as read (the tar's SHA-256)."""

    def __init__(self, joined: _Joined) -> None:
        # Read to its end by unpack, then dropped with the pieces' handles closed by _Joined.
        self._source = lzma.LZMAFile(io.BufferedReader(joined))  # noqa: SIM115
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._source.readinto(buffer)
        self.digest.update(memoryview(buffer)[:count])
        return count


def unpack(folder: Path, manifest: dict[str, Any], into: Path) -> list[Path]:
    """Join, decompress and untar the pieces in ``folder`` into ``into`` (emptied first),
    checking every hash of ``manifest``. Returns the stored wheels, in the manifest's order."""
    missing = [p["index"] for p in manifest["pieces"] if not (folder / p["file"]).is_file()]
    if missing:
        raise PiecesError(f"pieces {missing} are not in {folder}: send them first")
    for piece in manifest["pieces"]:
        if sha256(folder / piece["file"]) != piece["sha256"]:
            raise PiecesError(f"piece {piece['index']} in {folder} is damaged (SHA-256 differs): send it again")
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    joined = _Joined([folder / p["file"] for p in manifest["pieces"]])
    stream = _Decompressing(joined)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or "/" in member.name or member.name.startswith("."):
                    raise PiecesError(f"unexpected member {member.name!r} in the pieces")
                source = tar.extractfile(member)
                assert source is not None  # a regular file, checked above
                with (into / member.name).open("wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
        while stream.read(1 << 20):  # the tar's end blocks and padding, for its hash
            pass
    except (lzma.LZMAError, tarfile.TarError, EOFError) as exc:
        raise PiecesError(f"the joined pieces do not decompress: {exc}") from None
    if joined.digest.hexdigest() != manifest["xz"]["sha256"] or stream.digest.hexdigest() != manifest["tar"]["sha256"]:
        raise PiecesError("the joined pieces do not hash to the manifest's stream: send them again")
    wheels = []
    for entry in manifest["wheels"]:
        path = into / entry["file"]
        if not path.is_file() or sha256(path) != entry["sha256"]:
            raise PiecesError(f"{entry['file']} does not hash to the manifest's value")
        wheels.append(path)
    return wheels
