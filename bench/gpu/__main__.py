"""``python -m bench.gpu [--rehearse] STEP``; see ``bench/gpu/__init__.py`` and ``PLAN.md``.

Steps, in order (each idempotent: rerun, it redoes only what is missing or changed):

  pieces          here: download the wheels, build .gpu/pieces (the manifest and piece-NN)
  send N [N ...]  there: move the carried piece(s) into the stash, checking their SHA-256
  assemble        there: join, check, pip install --no-index --no-deps --target SITE, lay out maskserve
  export          there: trained-like Swin-T/ADE checkpoint; FP32 and FP16 bundles verified on the GPU
  model           there: CUDA EP (IO binding) FP32/FP16 against PyTorch eager FP32/autocast FP16
  answers         there: each GPU runner's answers against ONNX Runtime CPU FP32
  service         there: maskserve serve under load at each concurrency; prints the table
  table           either: the table from the results so far, and every step's JSON into $OUT
  record DIR      here: the GPU section of docs/benchmarks.md from the JSON files in DIR

--rehearse runs a step on this CPU: CPU provider, a tiny model, few iterations, its own folders
(.gpu/rehearsal-*, .bench/gpu-rehearsal). The standard library is all that pieces, send and
assemble import: they run before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.gpu import pieces, results, transfer
from bench.gpu.config import Config, make_config

MEASURING = ("export", "model", "answers", "service")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rehearse", action="store_true", help="on this CPU: CPU provider, tiny model, few iterations")
    parser.add_argument("--work", type=Path, help="checkpoint, bundles, results (default /tmp/maskserve-gpu)")
    parser.add_argument("--out", type=Path, help="where each step's JSON goes (default $OUT)")
    parser.add_argument("--pieces", type=Path, help="the pieces' folder in the repo (default .gpu/pieces)")
    parser.add_argument("--stash", type=Path, help="where sent pieces are kept (default /tmp/pieces)")
    parser.add_argument("--site", type=Path, help="where the wheels are installed (default /tmp/site)")
    steps = parser.add_subparsers(dest="step", required=True)
    made = steps.add_parser("pieces", help="download the wheels and build the pieces (here)")
    made.add_argument("--wheels", type=Path, help="where the wheels are kept (default .gpu/wheels)")
    made.add_argument("--no-download", action="store_true", help="use the wheels already in --wheels")
    made.add_argument("--piece-bytes", type=int, help="largest piece (default: 64 MiB - the tree - 4 MiB)")
    send = steps.add_parser("send", help="stash the carried piece(s) (there)")
    send.add_argument("indices", nargs="+", type=int)
    assemble = steps.add_parser("assemble", help="join the pieces and install the wheels (there)")
    assemble.add_argument("--imports", nargs="*", default=list(transfer.IMPORTS), help="modules that must import")
    for name in (*MEASURING, "table"):
        steps.add_parser(name)
    record = steps.add_parser("record", help="write the GPU section of docs/benchmarks.md from a run's JSON (here)")
    record.add_argument("results", type=Path)
    record.add_argument("--date", help="the run's date (default: model.json's modification date)")
    record.add_argument("--report", type=Path, help="default docs/benchmarks.md (rehearsal: WORK/benchmarks.md)")
    return parser


def _in_site(config: Config, argv: list[str]) -> None:
    """Re-run this command in ``transfer.site_environment`` unless already there, so that the
    measuring steps and their children import maskserve and the wheels from SITE. Without an
    assembled SITE the rehearsal runs in this environment (CI has no wheels to assemble)."""
    if os.environ.get("MASKSERVE_GPU_SITE") == str(config.site):
        return
    if not config.assembled.is_file():
        if config.rehearse:
            print(f"no assembled {config.site}: rehearsing in this environment", file=sys.stderr)
            os.environ["MASKSERVE_GPU_SITE"] = "none"
            return
        raise SystemExit(f"nothing is installed in {config.site}: run the send and assemble steps first")
    environment = transfer.site_environment(config.site) | {"MASKSERVE_GPU_SITE": str(config.site)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "bench.gpu", *argv], environment)


def _environment(config: Config) -> dict[str, Any]:
    """What the measuring steps run on; on the GPU machine, refuse the wrong onnxruntime early."""
    import onnxruntime
    import torch

    import maskserve

    found: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_file": onnxruntime.__file__,
        "maskserve_file": maskserve.__file__,
        "site": os.environ.get("MASKSERVE_GPU_SITE", "none"),
        "providers": onnxruntime.get_available_providers(),
    }
    if config.device == "cuda":
        if "CUDAExecutionProvider" not in found["providers"]:
            raise SystemExit(
                f"onnxruntime {onnxruntime.__version__} from {onnxruntime.__file__} has no CUDA provider: "
                "run the assemble step first"
            )
        if not torch.cuda.is_available():
            raise SystemExit("torch sees no CUDA device: this step needs the GPU machine (or --rehearse)")
        found |= {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
    return found


def _step(config: Config, name: str, run: Any) -> dict[str, Any]:
    started = time.perf_counter()
    result = run()
    result = {"step": name, "rehearse": config.rehearse, "seconds": round(time.perf_counter() - started, 1), **result}
    path = results.save(config, name, result)
    print(f"{name}: {result['seconds']} s, {path}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    config = make_config(args.rehearse, args.work, args.out, args.pieces, args.stash, args.site)
    step = args.step
    if step == "pieces":
        manifest = transfer.make_pieces(config, args.wheels, not args.no_download, args.piece_bytes)
        print(json.dumps({"pieces": len(manifest["pieces"]), "xz_bytes": manifest["xz"]["bytes"]}))
        return 0
    if step == "send":
        _step(config, f"send-{'-'.join(map(str, args.indices))}", lambda: transfer.send(config, args.indices))
        return 0
    if step == "assemble":
        _step(config, "assemble", lambda: transfer.assemble(config, args.imports))
        return 0
    if step == "record":
        return _record(args, config)
    if step == "table":
        found = results.load_all(config.results)
        if not found:
            raise SystemExit(f"no results in {config.results}: run the measuring steps first")
        table = "\n".join(results.tables(found, config.device))
        (config.results / "table.md").write_text(table + "\n")
        for name in [*(f"{step}.json" for step in found), "table.md"]:
            results.copy_out(config, name)  # every step's JSON back in one call, for record
        print(table)
        return 0
    _in_site(config, argv)
    if config.rehearse:
        os.environ["MASKSERVE_GPU_REHEARSE"] = "1"  # the children (export, serve) see it too
    environment = _environment(config)
    if step == "export":
        from bench.gpu import exporting

        result = _step(config, "export", lambda: exporting.run(config) | {"environment": environment})
        if not result["ok"]:
            return 1
    elif step == "model":
        from bench.gpu import timing

        _step(config, "model", lambda: timing.run(config) | {"environment": environment})
    elif step == "answers":
        from bench.gpu import answers

        _step(config, "answers", lambda: answers.run(config) | {"environment": environment})
    elif step == "service":
        from bench.gpu import service

        model = results.load_all(config.results).get("model")
        _step(config, "service", lambda: service.run(config, model) | {"environment": environment})
    table = "\n".join(results.tables(results.load_all(config.results), config.device))
    (config.results / "table.md").write_text(table + "\n")
    results.copy_out(config, "table.md")
    print(table)
    return 0


def _record(args: argparse.Namespace, config: Config) -> int:
    found = results.load_all(args.results)
    if not found.get("model"):
        raise SystemExit(f"no model.json in {args.results}: nothing measured to record")
    rehearsed = any(step.get("rehearse") for step in found.values())
    if rehearsed and not config.rehearse:
        raise SystemExit(f"the results in {args.results} are from a rehearsal: only a GPU run is recorded")
    if config.rehearse and not rehearsed:
        raise SystemExit(f"the results in {args.results} are from a GPU run: record them without --rehearse")
    report = args.report or (config.work / "benchmarks.md" if config.rehearse else results.REPORT)
    when = args.date or datetime.fromtimestamp((args.results / "model.json").stat().st_mtime, UTC).strftime("%Y-%m-%d")
    commands = results.plan_commands((Path(__file__).parent / "PLAN.md").read_text())
    text = report.read_text() if report.is_file() else "# Benchmarks\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(results.splice(text, results.section(found, when, commands, rehearsed)))
    print(f"wrote the GPU section into {report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except pieces.PiecesError as exc:
        raise SystemExit(str(exc)) from None
