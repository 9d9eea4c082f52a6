"""GPU benchmark: one command on a fresh GPU machine that has PyTorch but no internet.

Exports the Swin-T/ADE architecture (random weights), builds FP32 and FP16 TensorRT engines
(each verified against ONNX Runtime on CPU), then times batch 1/8/32 for PyTorch eager, ONNX
Runtime's CUDA and TensorRT execution providers, and the native TensorRT backend, and prints a
markdown table. A runtime that is not installed is reported as such, never skipped silently.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 8, 32)
CANVAS = (512, 512)


def _time(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _feeds(batch: int) -> dict[str, np.ndarray]:
    from maskserve.service.backends.base import graph_feeds

    pixels = np.random.default_rng(0).standard_normal((batch, 3, *CANVAS)).astype(np.float32)
    return graph_feeds(pixels, [CANVAS] * batch, 0.5, 0.5)


def torch_eager(checkpoint: Path, batch: int, repeats: int) -> float:
    import torch
    from transformers import MaskFormerForInstanceSegmentation

    model = MaskFormerForInstanceSegmentation.from_pretrained(checkpoint).eval().cuda()
    pixels = torch.from_numpy(_feeds(batch)["pixel_values"]).cuda()
    with torch.inference_mode():
        return _time(lambda: model(pixel_values=pixels), repeats, torch.cuda.synchronize)


def onnxruntime_provider(bundle: Path, provider: str, batch: int, repeats: int, cache: Path) -> float:
    from maskserve.bundle import TASK_OUTPUTS, Bundle
    from maskserve.service.backends.ort import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(Bundle.load(bundle).model_path, max_batch=32, provider=provider, engine_cache=cache)
    feeds = _feeds(batch)
    return _time(lambda: backend.run(feeds, list(TASK_OUTPUTS["panoptic"])), repeats)


def native_tensorrt(engine: Path, batch: int, repeats: int) -> float:
    from maskserve.bundle import TASK_OUTPUTS
    from maskserve.service.backends.tensorrt.backend import TensorRTBackend

    backend = TensorRTBackend(engine)
    feeds = _feeds(batch)
    try:
        return _time(lambda: backend.run(feeds, list(TASK_OUTPUTS["panoptic"])), repeats)
    finally:
        backend.close()


def _unavailable(why: str) -> Callable[[int], float]:
    def run(_: int) -> float:
        raise RuntimeError(why)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "gpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    from bench.checkpoints import save_swin_tiny_ade

    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = save_swin_tiny_ade(args.work / "swin-tiny-ade")
    bundle = args.work / "bundle"
    if not (bundle / "bundle.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "maskserve.cli",
                "export",
                "--model",
                str(checkpoint),
                "--out",
                str(bundle),
                "--max-batch",
                "32",
                "--force",
            ],
            check=True,
        )
    engines: dict[str, Path | str] = {}
    for precision in ("fp32", "fp16"):
        command = [
            sys.executable,
            "-m",
            "maskserve.cli",
            "build-engine",
            "--bundle",
            str(bundle),
            "--batch",
            "1",
            "8",
            "32",
        ]
        command += ["--canvas", f"{CANVAS[0]}x{CANVAS[1]}", "--out", str(args.work / "engines")]
        command += ["--fp16"] if precision == "fp16" else []
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        print(result.stdout + result.stderr, file=sys.stderr)
        lines = [line for line in result.stdout.splitlines() if line.startswith("engine: ")]
        engines[precision] = (
            Path(lines[0].split(": ", 1)[1])
            if result.returncode == 0 and lines
            else ((result.stderr.strip().splitlines() or ["failed"])[-1])
        )

    runners: dict[str, Callable[[int], float]] = {
        "PyTorch eager (fp32)": lambda b: torch_eager(checkpoint, b, args.repeats),
        "ONNX Runtime CUDA EP (fp32)": lambda b: onnxruntime_provider(
            bundle, "cuda", b, args.repeats, args.work / "ort"
        ),
        "ONNX Runtime TensorRT EP (fp32)": lambda b: onnxruntime_provider(
            bundle, "tensorrt", b, args.repeats, args.work / "ort"
        ),
    }
    for precision, engine in engines.items():
        runners[f"native TensorRT ({precision})"] = (
            (lambda b, e=engine: native_tensorrt(e, b, args.repeats))
            if isinstance(engine, Path)
            else _unavailable(engine)
        )

    from bench.machine import versions

    gpu = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(f"GPU: {gpu or 'unknown'}; " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print()
    print("| runtime | " + " | ".join(f"batch {b} (ms/image)" for b in BATCHES) + " |")
    print("|---|" + "---|" * len(BATCHES))
    for name, runner in runners.items():
        cells = []
        for batch in BATCHES:
            try:
                cells.append(f"{runner(batch) / batch * 1000:.2f}")
            except Exception as exc:  # report why a runtime cannot run here
                cells.append(f"n/a ({(str(exc).splitlines() or [type(exc).__name__])[0][:60]})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
