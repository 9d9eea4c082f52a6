"""``python -m bench.service_load``: the service under load against its bare backend, per backend.

For each backend, ``maskserve serve`` runs in a child process (as an operator runs it) and an
asyncio client keeps 1, 4 and 16 panoptic requests in flight on one PNG scene for ``--seconds``
each; then the bare backend, in a fresh child process with the server's own options, runs
``Backend.run`` on already-prepared feeds at every batch size the batcher can form. Printed side by
side: the service's throughput against the bare backend's at the batch sizes it formed (the
overhead of decoding, batching, post-processing and HTTP, and whether that work starves the model),
and the model call inside the service against the same call alone.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import httpx

from bench import machine
from bench.service_level import LoadResult, bare_throughput, load, server

ROOT = Path(__file__).resolve().parent.parent


def _counter(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _scene_png(side: int) -> bytes:
    from PIL import Image

    from demo.scenes import generate_scene

    buffer = io.BytesIO()
    Image.fromarray(generate_scene(0, side).image).save(buffer, format="PNG")
    return buffer.getvalue()


def measure(bundle: Path, backend: str, image: bytes, canvas: tuple[int, int], args: argparse.Namespace) -> Measured:
    """Per (concurrency level, worker niceness), its load result and mean batch size; the bare
    images/s per batch size. A fresh server per level: the niceness is a start-up setting, and
    levels run alternately across nicenesses."""
    # The bare backend before and after the service, half the time each: a shared machine's load
    # drifts, and the service levels are compared with the mean.
    halves = [_bare(bundle, backend, canvas, args, "before")]
    levels: list[tuple[int, LoadResult, float]] = []
    for nice, concurrency in [(nice, c) for c in args.concurrency for nice in args.worker_nice]:
        with server(bundle, args.max_batch, canvas, backend, nice) as url:
            batches, images = _counter(url, "maskserve_batches_total"), _counter(url, "maskserve_inferences_total")
            result = load(url, image, "panoptic", concurrency, args.seconds)
            batches = _counter(url, "maskserve_batches_total") - batches
            mean_batch = (_counter(url, "maskserve_inferences_total") - images) / max(batches, 1)
            levels.append((nice, result, mean_batch))
            print(
                f"  {backend} nice {nice} service c={concurrency}: {result.throughput:.2f} img/s, "
                f"p50 {result.percentile(50):.3f} s, batch {mean_batch:.2f}, "
                f"model call {result.stage('inference'):.3f} s",
                file=sys.stderr,
            )
    halves.append(_bare(bundle, backend, canvas, args, "after"))
    return levels, {batch: (halves[0][batch] + halves[1][batch]) / 2 for batch in halves[0]}


def _bare(bundle: Path, backend: str, canvas: tuple[int, int], args: argparse.Namespace, when: str) -> dict[int, float]:
    rates = {}
    for batch in range(1, args.max_batch + 1):
        rates[batch] = bare_throughput(bundle, batch, canvas, "panoptic", args.bare_seconds / 2, backend)
        print(f"  {backend} bare b={batch} ({when}): {rates[batch]:.2f} img/s", file=sys.stderr)
    return rates


Measured = tuple[list[tuple[int, LoadResult, float]], dict[int, float]]


def render(results: dict[str, Measured], args: argparse.Namespace) -> str:
    lines = [
        f"`python -m bench.service_load` on {machine.machine_line()}; {args.model}, {args.side}x{args.side} PNG, "
        f"panoptic, MASKSERVE_MAX_BATCH_SIZE={args.max_batch}, "
        f"{args.seconds:.0f} s per level; 1-minute load "
        f"average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "Bare: `Backend.run` alone on prepared feeds, in a fresh process, at the batch size the service formed "
        "(interpolated between the measured sizes; the mean of runs before and after the service). "
        "Model call: the median `inference` timing of the answers "
        "(their batch's model call) against the bare call at that batch.",
        "",
        "| backend | worker nice | concurrency | service img/s | p50 s | p95 s | mean batch | bare img/s "
        "| service / bare | model call in service s | bare call s | in service / bare |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, (levels, bare) in results.items():
        for nice, result, batch in levels:
            low = max(1, min(int(batch), args.max_batch))
            high = min(low + 1, args.max_batch)
            weight = min(max(batch - low, 0.0), 1.0)
            bare_rate = bare[low] * (1 - weight) + bare[high] * weight
            bare_call = batch / bare_rate
            call = result.stage("inference")
            lines.append(
                f"| {backend} | {nice} | {result.concurrency} | {result.throughput:.2f} | {result.percentile(50):.3f} "
                f"| {result.percentile(95):.3f} | {batch:.2f} | {bare_rate:.2f} "
                f"| **{result.throughput / bare_rate:.2f}** | {call:.3f} | {bare_call:.3f} "
                f"| **{call / bare_call:.2f}** |"
            )
    lines += ["", "Bare backend, images/s per batch size:", ""]
    lines += ["| backend | " + " | ".join(f"b={b}" for b in range(1, args.max_batch + 1)) + " |"]
    lines += ["|---|" + "---|" * args.max_batch]
    for backend, (_, bare) in results.items():
        lines.append(f"| {backend} | " + " | ".join(f"{bare[b]:.2f}" for b in sorted(bare)) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.service_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="bundle to serve (default: the Swin-T/ADE fp32 bundle in .bench/)")
    parser.add_argument("--side", type=int, default=512, help="square image and canvas side")
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each load level")
    parser.add_argument("--bare-seconds", type=float, default=10.0, help="duration of each bare batch size")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument(
        "--worker-nice", type=int, nargs="+", default=[0, 10], help="MASKSERVE_WORKER_NICE values to compare"
    )
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if args.bundle:
        bundle = Path(args.bundle)
        args.model = f"bundle {bundle.name}"
    else:
        from bench.checkpoints import swin_tiny_ade_bundles

        bundle, _ = swin_tiny_ade_bundles(ROOT / ".bench")
        args.model = "Swin-T/ADE architecture (random weights)"
    image, canvas = _scene_png(args.side), (args.side, args.side)
    results = {backend: measure(bundle, backend, image, canvas, args) for backend in args.backends}
    text = render(results, args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
