"""Evaluate the demo model through PyTorch + transformers and through the exported bundle(s).

    python -m demo.evaluate --checkpoint demo/checkpoint --bundle maskserve/assets/shapes \
        [--extra-bundle LABEL=DIR ...] [--images 200]

Prints one table (mIoU, PQ, SQ, RQ, things/stuff) per source and checks the targets:
mIoU >= 0.85 and PQ >= 0.60 through the bundle, and |bundle - PyTorch| <= 0.2 points on both.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from demo.arguments import bundle_dir, checkpoint_dir, labelled_bundle
from demo.evaluate_bundle import bundle_predictor
from demo.evaluate_torch import torch_predictor
from demo.evaluation import EVAL_SEEDS, Report, evaluate, markdown_table
from maskserve.service.postprocess import PanopticRule

MIOU_TARGET, PQ_TARGET, MAX_GAP_POINTS = 0.85, 0.60, 0.2


def summary_row(name: str, report: Report) -> str:
    pan, sem = report.panoptic, report.semantic
    values = (sem.miou, pan.pq, pan.sq, pan.rq, pan.things.pq, pan.stuff.pq)
    return f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in values) + " |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=checkpoint_dir, required=True)
    parser.add_argument("--bundle", type=bundle_dir, required=True)
    parser.add_argument(
        "--extra-bundle", type=labelled_bundle, action="append", default=[], metavar="LABEL=DIR", help="e.g. int8=DIR"
    )
    parser.add_argument("--images", type=int, default=len(EVAL_SEEDS))
    args = parser.parse_args(argv)
    seeds = range(args.images)

    torch_predict, size = torch_predictor(args.checkpoint)
    reports = {"PyTorch + transformers post_process_*": evaluate(torch_predict, seeds, size)}
    for rule in (PanopticRule.TRANSFORMERS, PanopticRule.MASKFORMER):
        predict, side = bundle_predictor(args.bundle, rule)
        reports[f"bundle + maskserve host ({rule.value} rule)"] = evaluate(predict, seeds, side)
    for label, path in args.extra_bundle:
        predict, side = bundle_predictor(path, PanopticRule.TRANSFORMERS)
        reports[f"{label} bundle ({PanopticRule.TRANSFORMERS.value} rule)"] = evaluate(predict, seeds, side)

    print(f"Held-out scenes: seeds 0..{args.images - 1} at {size}x{size}.\n")
    print("| source | mIoU | PQ | SQ | RQ | PQ things | PQ stuff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, report in reports.items():
        print(summary_row(name, report))
    names = list(reports)
    reference, bundle = reports[names[0]], reports[names[1]]
    print(f"\nPer class, {names[1]}:\n")
    print(markdown_table(bundle))

    gaps = (
        100 * abs(bundle.semantic.miou - reference.semantic.miou),
        100 * abs(bundle.panoptic.pq - reference.panoptic.pq),
    )
    checks = [
        (
            f"bundle mIoU {100 * bundle.semantic.miou:.1f} >= {100 * MIOU_TARGET:.0f}",
            bundle.semantic.miou >= MIOU_TARGET,
        ),
        (f"bundle PQ {100 * bundle.panoptic.pq:.1f} >= {100 * PQ_TARGET:.0f}", bundle.panoptic.pq >= PQ_TARGET),
        (f"|bundle - PyTorch| mIoU {gaps[0]:.2f} points <= {MAX_GAP_POINTS}", gaps[0] <= MAX_GAP_POINTS),
        (f"|bundle - PyTorch| PQ {gaps[1]:.2f} points <= {MAX_GAP_POINTS}", gaps[1] <= MAX_GAP_POINTS),
    ]
    print("\n| target | met |\n|---|---|")
    for text, ok in checks:
        print(f"| {text} | {'yes' if ok else 'no'} |")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
