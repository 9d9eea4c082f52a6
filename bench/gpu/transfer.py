"""The transfer steps: wheels to a machine that reaches no registry, and the site they make there.

``pieces`` (here): download the wheels and cut them into pieces under what one device call may
carry beside the tree (``bench.gpu.pieces`` is the format). ``send N`` (there): move piece N
out of the repo copy into a stash that outlives the call, checking its hash. ``assemble``
(there): join and check everything, ``pip install --no-index --no-deps --target SITE``, lay
maskserve out in SITE from the tree, and import all of it from SITE in a child process.

The measuring steps then run with ``site_environment``: SITE first on ``sys.path`` and no
current directory before it, so that ``maskserve`` is the installed package, not the tree's
``maskserve/`` folder (which holds only the root module; ``service/`` etc. are mapped into it
at install time).

Standard library only: these steps run before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.gpu import pieces
from bench.gpu.config import ROOT, Config

CALL_LIMIT = 64 << 20  # what one device call carries: the tree, shared/ and the carried paths
MARGIN = 4 << 20  # room for the manifest and for the tree growing before the run
REHEARSAL_PIECE = 4 << 20  # small, so that the rehearsal sends several pieces

# The big one: ONNX Runtime's CUDA execution provider for the machine's CUDA 13 (its `cuda` and
# `cudnn` extras name nvidia-cuda-runtime~=13.0 and nvidia-cudnn-cu13~=9.0, which torch brought there).
BIG = ("onnxruntime-gpu==1.31.1",)
# What the server imports that the machine lacks (the list), at the versions tested here.
# typing-extensions travels too: pydantic 2.14 needs a recent one, whatever the machine holds.
SMALL = (
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "pydantic-settings==2.16.3",
    "python-dotenv==1.2.4",
    "uvicorn==0.54.0",
    "python-multipart==0.0.34",
    "pycocotools==2.0.11",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
    "sniffio==1.3.1",
)
# The GPU machine: CPython 3.12 on x86-64 Linux (glibc 2.28 or newer).
PLATFORM: tuple[str, ...] = ("--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:")
PLATFORM += tuple(
    arg
    for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
    for arg in ("--platform", tag)
)
# What must import from SITE after assembling.
IMPORTS = (
    "onnxruntime",
    "fastapi",
    "starlette",
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "dotenv",
    "uvicorn",
    "multipart",
    "pycocotools",
    "annotated_types",
    "typing_inspection",
    "maskserve",
)


def requirements(config: Config) -> tuple[list[str], list[str]]:
    """The wheels to download and pip's platform options. The rehearsal takes this interpreter's
    wheels, with the CPU onnxruntime of this venv standing in for onnxruntime-gpu."""
    if config.rehearse:
        from importlib.metadata import version

        return [f"onnxruntime=={version('onnxruntime')}", *SMALL], ["--only-binary=:all:"]
    return [*BIG, *SMALL], list(PLATFORM)


def default_wheels(config: Config) -> Path:
    return ROOT / ".gpu" / ("rehearsal-wheels" if config.rehearse else "wheels")


def tree_bytes(root: Path = ROOT) -> int:
    """What a device call sends besides the carried paths: tracked and untracked-not-ignored
    files, and shared/ if the checkout has one."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = {root / os.fsdecode(name) for name in listed if name}
    shared = root / "shared"
    if shared.is_dir():
        files |= {path for path in shared.rglob("*") if path.is_file()}
    return sum(path.stat().st_size for path in files if path.is_file() and not path.is_symlink())


def download(wheels: Path, wanted: Sequence[str], platform: Sequence[str]) -> list[Path]:
    """``pip download`` the wheels (pip skips files already there); returns exactly those."""
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *platform, "-d", str(wheels), *wanted]
    if subprocess.run(command, check=False).returncode != 0:
        raise SystemExit(f"pip download failed for {' '.join(wanted)} (see above)")
    names = {_project(requirement) for requirement in wanted}
    return sorted(path for path in wheels.glob("*.whl") if _project(path.name.split("-")[0]) in names)


def _project(name: str) -> str:
    """A requirement's or wheel file's project name, normalized (PEP 503)."""
    bare = name.split("==")[0].split("[")[0]
    return bare.lower().replace("_", "-").replace(".", "-")


def make_pieces(config: Config, wheel_dir: Path | None, download_them: bool, piece_bytes: int | None) -> dict[str, Any]:
    """The ``pieces`` step (here). Rerun, pieces built from the same wheels are kept."""
    wheel_dir = wheel_dir or default_wheels(config)
    wanted, platform = requirements(config)
    wheels = download(wheel_dir, wanted, platform) if download_them else sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no wheels in {wheel_dir}")
    tree = tree_bytes()
    limit = piece_bytes or (REHEARSAL_PIECE if config.rehearse else CALL_LIMIT - tree - MARGIN)
    if limit <= 0:
        raise SystemExit(f"the tree alone is {tree / 2**20:.1f} MiB: nothing fits beside it in a call")
    # Kept while each piece fits beside the tree and the manifest (16 KiB is plenty for it).
    fits = piece_bytes or (REHEARSAL_PIECE if config.rehearse else CALL_LIMIT - tree - (16 << 10))
    if pieces.fresh(config.pieces, wheels, fits):
        manifest = pieces.load_manifest(config.pieces)
        print(f"pieces in {config.pieces} are up to date", file=sys.stderr)
    else:
        print(f"building pieces of at most {limit / 2**20:.1f} MiB (tree {tree / 2**20:.1f} MiB)", file=sys.stderr)
        # The rehearsal compresses faster (the format is the same; only the ratio differs).
        manifest = pieces.build(wheels, config.pieces, limit, preset=6 if config.rehearse else pieces.STRONGEST)
    manifest_bytes = (config.pieces / "manifest.json").stat().st_size
    for piece in manifest["pieces"]:
        room = CALL_LIMIT - tree - manifest_bytes - piece["bytes"]
        print(f"{config.pieces / piece['file']}: {piece['bytes'] / 2**20:.1f} MiB ({room / 2**20:.1f} MiB to spare)")
        if room < 0:
            raise SystemExit(f"piece {piece['index']} no longer fits beside the tree: run pieces --piece-bytes smaller")
    return manifest | {"tree_bytes": tree}


def send(config: Config, indices: Sequence[int]) -> dict[str, Any]:
    """The ``send N`` step (there): move the carried piece(s) into the stash, checking each hash.
    Rerun, a piece already stashed with the right hash is kept."""
    try:
        manifest = pieces.load_manifest(config.pieces)
    except pieces.PiecesError as exc:
        raise SystemExit(f"{exc}: name .gpu/pieces/manifest.json in carry") from None
    config.stash.mkdir(parents=True, exist_ok=True)
    stashed_manifest = config.stash / "manifest.json"
    if stashed_manifest.is_file() and stashed_manifest.read_bytes() != (config.pieces / "manifest.json").read_bytes():
        # Pieces of another build: none of them fits this manifest's stream.
        for stale in config.stash.glob("piece-*"):
            stale.unlink()
    shutil.copyfile(config.pieces / "manifest.json", stashed_manifest)
    by_index = {piece["index"]: piece for piece in manifest["pieces"]}
    for index in indices:
        if index not in by_index:
            raise SystemExit(f"there is no piece {index}: the manifest has pieces 1 to {len(by_index)}")
        piece = by_index[index]
        carried, kept = config.pieces / piece["file"], config.stash / piece["file"]
        if kept.is_file() and pieces.sha256(kept) == piece["sha256"]:
            print(f"piece {index} already in {config.stash}", file=sys.stderr)
            if not config.rehearse:
                carried.unlink(missing_ok=True)
            continue
        if not carried.is_file():
            raise SystemExit(f"piece {index} was not carried: name {_carry_name(config, piece)} in carry")
        if pieces.sha256(carried) != piece["sha256"]:
            raise SystemExit(f"piece {index} arrived damaged (SHA-256 differs from the manifest's): send it again")
        # Moved there: the device's repo copy keeps ignored files between calls, and the tree is
        # copied again each call. The rehearsal copies (its pieces folder is the only one).
        (shutil.copyfile if config.rehearse else shutil.move)(str(carried), str(kept))
        print(f"piece {index} -> {kept}", file=sys.stderr)
    return status(config, manifest)


def _carry_name(config: Config, piece: dict[str, Any]) -> str:
    path = config.pieces / piece["file"]
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def status(config: Config, manifest: dict[str, Any]) -> dict[str, Any]:
    present = [p["index"] for p in manifest["pieces"] if (config.stash / p["file"]).is_file()]
    missing = [p["index"] for p in manifest["pieces"] if p["index"] not in present]
    print(f"stashed: {present or 'none'}; still to send: {missing or 'none'}", file=sys.stderr)
    return {"stash": str(config.stash), "present": present, "missing": missing}


def package_dirs(root: Path = ROOT) -> dict[str, str]:
    """pyproject's ``[tool.setuptools.package-dir]``: import name -> repository folder."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return mapping


def _source_digest(root: Path = ROOT) -> str:
    """What maskserve is laid out from: every file of its folders."""
    digest = hashlib.sha256()
    for folder in sorted(set(package_dirs(root).values())):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def install_maskserve(site: Path, root: Path = ROOT) -> None:
    """maskserve copied into ``site`` as its wheel lays it out (``service/`` becomes
    ``maskserve/service`` ...): no build backend needed, which the GPU machine may lack, and
    the same modules as ``pip install .`` (tests/packaging holds pyproject's list complete)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.rmtree(site / "maskserve", ignore_errors=True)
    mapping = package_dirs(root)
    # The root package first: the others are folders inside it.
    for package in sorted(mapping, key=lambda name: name.count(".")):
        shutil.copytree(root / mapping[package], site.joinpath(*package.split(".")), ignore=ignore)


def site_environment(site: Path) -> dict[str, str]:
    """The environment the measuring steps (and their children) run in: ``site`` first on
    ``sys.path``, then the tree (for ``bench`` and ``demo``), and no current directory before
    them (PYTHONSAFEPATH: ``python -m`` would put the tree's ``maskserve/`` folder first)."""
    path = [str(site), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path)), "PYTHONSAFEPATH": "1"}


# Run in a child with site_environment: every module must come from SITE, and on the GPU
# ONNX Runtime must open a CUDA session through maskserve's own loading (CUDA 13, cuDNN 9).
CHECK = """
import importlib, json, sys, tempfile
found = {}
for name in sys.argv[2:]:
    module = importlib.import_module(name)
    found[name] = [getattr(module, "__version__", ""), module.__file__]
session = None
if sys.argv[1] != "none":
    import onnx
    from onnx import TensorProto, helper
    from maskserve.service.backends.ort import OnnxRuntimeBackend
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "probe", [x], [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    with tempfile.NamedTemporaryFile(suffix=".onnx") as handle:
        onnx.save(model, handle.name)
        backend = OnnxRuntimeBackend(__import__("pathlib").Path(handle.name), 1, provider=sys.argv[1], staged=False)
        session = backend.session.get_providers()
print(json.dumps({"imports": found, "session_providers": session}))
"""


def assemble(config: Config, verify_imports: Sequence[str]) -> dict[str, Any]:
    """The ``assemble`` step (there). Rerun, it reinstalls only what changed: the wheels when the
    manifest differs from the installed one, maskserve when its source differs."""
    try:
        manifest = pieces.load_manifest(config.stash)
    except pieces.PiecesError as exc:
        raise SystemExit(f"{exc}: send the pieces first") from None
    done: dict[str, Any] = json.loads(config.assembled.read_text()) if config.assembled.is_file() else {}
    config.site.mkdir(parents=True, exist_ok=True)
    if done.get("xz_sha256") != manifest["xz"]["sha256"]:
        try:
            wheels = pieces.unpack(config.stash, manifest, config.stash / "wheels")
        except pieces.PiecesError as exc:
            raise SystemExit(str(exc)) from None
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        command += ["--no-cache-dir", "--upgrade", "--target", str(config.site), *map(str, wheels)]
        if subprocess.run(command, check=False).returncode != 0:
            raise SystemExit("pip install --target failed (see above)")
        done = {"xz_sha256": manifest["xz"]["sha256"], "wheels": [w.name for w in wheels]}
        config.assembled.write_text(json.dumps(done))
        shutil.rmtree(config.stash / "wheels")
    else:
        print(f"wheels already installed in {config.site}", file=sys.stderr)
    source = _source_digest()
    if done.get("maskserve_source") != source:
        install_maskserve(config.site)
        done["maskserve_source"] = source
        config.assembled.write_text(json.dumps(done))
    else:
        print("maskserve already laid out from this tree", file=sys.stderr)
    provider = "cpu" if config.rehearse else "cuda"
    result = subprocess.run(
        [sys.executable, "-c", CHECK, provider if "maskserve" in verify_imports else "none", *verify_imports],
        capture_output=True,
        text=True,
        env=site_environment(config.site),
        cwd=config.site,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"installed, but the check fails:\n{result.stderr.strip()[-3000:]}")
    checked = json.loads(result.stdout.strip().splitlines()[-1])
    imported = checked["imports"]
    outside = [name for name, (_, path) in imported.items() if not str(path).startswith(str(config.site))]
    if outside:
        raise SystemExit(f"installed, but {', '.join(outside)} import from elsewhere than {config.site}")
    for name, (version, path) in imported.items():
        print(f"  {name} {version} from {path}", file=sys.stderr)
    if checked["session_providers"]:
        print(f"  an onnxruntime session opens on {checked['session_providers'][0]}", file=sys.stderr)
    return {
        "site": str(config.site),
        "wheels": done["wheels"],
        "imports": imported,
        "session_providers": checked["session_providers"],
    }
