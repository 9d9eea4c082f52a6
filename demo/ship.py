"""Ship a trained demo checkpoint: copy it into the repo, export the embedded bundle, render the
example images, and write the model card from a fresh evaluation.

    python -m demo.ship --trained DIR [--earlier DIR ...] [--images 200]

Writes ``demo/checkpoint/`` (transformers format), ``maskserve/assets/shapes/`` (the bundle that
``maskserve serve`` serves by default), ``examples/scene-*.png`` and ``demo/MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from demo.arguments import training_run
from demo.scenes import LABELS, THING_IDS, generate_scene, save_example

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "demo" / "checkpoint"
BUNDLE = ROOT / "maskserve" / "assets" / "shapes"
EXAMPLES = ROOT / "examples"
CARD = ROOT / "demo" / "MODEL_CARD.md"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "training.json")
EXAMPLE_SEEDS = (0, 1, 2, 3)  # held-out evaluation seeds, not picked by result
EXAMPLE_SIZE = 256


def export(checkpoint: Path, out: Path, side: int, *extra: str) -> None:
    canvases = [f"{side - 32}x{side}", f"{side}x{side - 32}"]
    command = [sys.executable, "-m", "maskserve.cli", "export", "--model", str(checkpoint), "--out", str(out)]
    command += ["--thing-ids", *map(str, THING_IDS), "--name", "shapes", "--default-task", "panoptic", "--force"]
    for canvas in canvases:
        command += ["--canvas", canvas]
    if subprocess.run([*command, *extra], check=False).returncode != 0:
        # The export CLI has already printed its one-line error or its verification table.
        raise SystemExit(f"error: exporting {checkpoint} to {out} failed (see above)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trained", type=training_run, required=True, help="output directory of demo.train")
    parser.add_argument(
        "--earlier",
        type=training_run,
        action="append",
        default=[],
        help="when --trained continued other runs (--init-from), their directories, oldest first",
    )
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args(argv)
    if args.trained == CHECKPOINT.resolve():
        parser.error("--trained is demo/checkpoint itself: pass the demo.train output directory to ship")

    CHECKPOINT.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        shutil.copy2(args.trained / name, CHECKPOINT / name)
    for stale in CHECKPOINT.glob("training-*.json"):
        stale.unlink()
    stages = [json.loads((earlier / "training.json").read_text()) for earlier in args.earlier]
    for index, earlier in enumerate(args.earlier, start=1):
        shutil.copy2(earlier / "training.json", CHECKPOINT / f"training-run{index}.json")
    side = int(json.loads((CHECKPOINT / "preprocessor_config.json").read_text())["size"]["height"])
    EXAMPLES.mkdir(exist_ok=True)
    for index, seed in enumerate(EXAMPLE_SEEDS, start=1):
        save_example(generate_scene(seed, EXAMPLE_SIZE), EXAMPLES / f"scene-{index}.png")
    export(CHECKPOINT, BUNDLE, side, "--verify-images", str(EXAMPLES))  # the examples are held-out scenes
    int8 = ROOT / ".bench" / "shapes-int8"
    export(CHECKPOINT, int8, side, "--int8")

    from demo.evaluate import main as evaluate

    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        met = (
            evaluate(
                [
                    "--checkpoint",
                    str(CHECKPOINT),
                    "--bundle",
                    str(BUNDLE),
                    "--extra-bundle",
                    f"int8={int8}",
                    "--images",
                    str(args.images),
                ]
            )
            == 0
        )
    training = json.loads((CHECKPOINT / "training.json").read_text())
    CARD.write_text(model_card([*stages, training], table.getvalue(), side))
    print(table.getvalue())
    print(f"wrote {CHECKPOINT}, {BUNDLE}, {EXAMPLES} and {CARD}; targets {'met' if met else 'NOT met'}")
    return 0 if met else 1


def _run_lines(training: dict[str, Any]) -> str:
    options = training["options"]
    command = " ".join(["python", *[str(part) for part in training["command"][1:]]])  # not this machine's path
    return (
        f"```\n{command}\n```\n\n- seed {training['seed']}, {training['steps']} steps of batch {options['batch']} in "
        f"{training['wall_time_s']} s of wall time on this project's 2-core CPU machine; final loss "
        f"{training['final_loss']}."
    )


def model_card(runs: list[dict[str, Any]], evaluation: str, side: int) -> str:
    training = runs[-1]
    options = training["options"]
    steps = sum(run["steps"] for run in runs)
    minutes = sum(run["wall_time_s"] for run in runs) / 60
    history = "\n\n".join(
        f"Run {index} of {len(runs)}{f' (continues run {index - 1})' if index > 1 else ''}:\n\n{_run_lines(run)}"
        for index, run in enumerate(runs, start=1)
    )
    classes = "\n".join(
        f"| {label} | {name} | {'thing' if label in THING_IDS else 'stuff'} |" for label, name in LABELS.items()
    )
    return f"""# Model card: `shapes`, the embedded demo MaskFormer

The model `maskserve serve` serves when no bundle is given. It is a small
`MaskFormerForInstanceSegmentation` (transformers) trained from scratch, on CPU, on procedurally
generated scenes (`demo/scenes.py`): sky over ground split by a random horizon, with circles,
squares and triangles of random size, colour, position and rotation, 0-6 per image, possibly
overlapping. It exists so that a fresh machine serves something that works without a download,
and as a fixed yardstick: its accuracy before and after export, int8, fp16 or TensorRT says
whether a runtime change hurt quality.

## Classes

| id | name | kind |
|---|---|---|
{classes}

## Architecture and input

ResNet backbone (widths 32/64/128/256, `layer_type` basic, depths {options.get("depths")}), a
3-layer DETR decoder (d_model 128, 4 heads), {options.get("queries")} queries, mask and FPN features
128. Input: {side}x{side} RGB, normalized with the ImageNet mean and std (`preprocessor_config.json`).
The exported bundle letterboxes any image into {side}x{side}, {side - 32}x{side} or {side}x{side - 32}.

## Training

{steps} steps in {minutes:.0f} minutes of CPU time in all.

{history}

- Loss: transformers' built-in Hungarian-matching loss (cross-entropy, mask, dice), on every
  decoder layer, plus a training-only per-pixel class loss on the pixel embeddings and the last
  backbone stage (`DenseHeads` in `demo/train.py`, weight {options.get("dense_weight")}); those heads
  are not part of the saved model.
- The query embeddings are re-initialised with std 1.0: with transformers' default (0.02) every
  query decodes to the same output and training collapses to "no object".
- Training scenes: seeds from 1,000,000 upwards; evaluation: seeds 0-199, never trained on.

## Evaluation

`python -m demo.evaluate --checkpoint demo/checkpoint --bundle maskserve/assets/shapes` (numbers in
percent; our mIoU and panopticapi-style PQ code in `demo/metrics.py`, tested on hand-computed
cases). The int8 row is `maskserve export --int8` of the same checkpoint.

{evaluation.strip()}

## Files

- `demo/checkpoint/`: `config.json`, `model.safetensors`, `preprocessor_config.json`, `training.json`
  (the last run), `training-run*.json` (the runs it continued).
- `maskserve/assets/shapes/`: the bundle (`bundle.json`, `model.onnx`), re-exported from the
  checkpoint by `python -m demo.ship`; a test re-exports it and checks the outputs match.
- `examples/scene-*.png`: held-out scenes (seeds {", ".join(map(str, EXAMPLE_SEEDS))}) at {EXAMPLE_SIZE}x{EXAMPLE_SIZE}.
"""


if __name__ == "__main__":
    sys.exit(main())
