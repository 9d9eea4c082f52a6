"""Train the demo MaskFormer from scratch on generated scenes, within a wall-clock budget.

    python -m demo.train --out checkpoints/demo --minutes 30 --size 256

The learning-rate schedule (linear warm-up, cosine decay) spans the whole budget. Its clock
is wall time, not a step count estimated from early speed: on a shared 2-core machine the
speed swings several-fold as other work comes and goes (a measured run went from 1.9 to
0.3 s per step), and a step-count estimate then ends the decay far too early or too late.
``--steps`` fixes the count instead. The result is a transformers checkpoint (``save_pretrained``) with its
``preprocessor_config.json`` and a ``training.json`` record.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import MaskFormerForInstanceSegmentation, MaskFormerImageProcessor

from demo.architecture import build_model, demo_config
from demo.arguments import checkpoint_dir
from demo.data import TRAIN_SEED_START, Batch, SceneStream, collate
from demo.scenes import LABELS
from maskserve.export.metadata import IMAGENET_MEAN, IMAGENET_STD

SAVE_RESERVE_S = 10.0
"""Seconds kept back from the budget for saving the checkpoint."""
MIN_LR_FRACTION = 0.02
FINAL_LAYER_TERMS = ("loss_cross_entropy", "loss_mask", "loss_dice")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget, start-up included")
    parser.add_argument(
        "--steps", type=int, default=None, help="a fixed step count for the schedule (--minutes still caps the run)"
    )
    parser.add_argument("--size", type=int, default=192, help="square image side in pixels, a multiple of 32")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed")
    # Learning is limited by optimizer steps more than by images seen: at equal images,
    # batch 4 beat batch 8 (things PQ 0.16 vs 0.07 after 16k images at 256 px).
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    # The raw gradient norm is ~1e4, nearly all of it in the first decoder layer's
    # self-attention biases (its inputs are all zeros, so LayerNorm amplifies them); the
    # clip rescales every step to norm 1, which AdamW's per-parameter scaling absorbs.
    parser.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip; 0 disables")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument(
        "--depths", type=int, nargs="+", default=[1, 1, 1, 1], help="ResNet blocks per stage; 3 or 4 stages"
    )
    parser.add_argument(
        "--aux-loss",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also supervise every decoder layer (training only; the saved config has it off)",
    )
    parser.add_argument(
        "--dense-weight",
        type=float,
        default=1.0,
        help="weight of the training-only per-pixel class loss on the pixel embeddings and the last "
        "backbone stage (0 disables); see DenseHeads",
    )
    parser.add_argument(
        "--init-from",
        type=checkpoint_dir,
        help="continue from this checkpoint's weights (a new optimizer and schedule; --queries and --depths "
        "must match it)",
    )
    parser.add_argument(
        "--first-scene",
        type=int,
        default=TRAIN_SEED_START,
        help="seed of the first training scene (a run that continues another can start past the scenes it saw)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader processes generating scenes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log-every", type=int, default=25)
    args = parser.parse_args(argv)
    if args.first_scene < TRAIN_SEED_START:
        parser.error(f"--first-scene must be at least {TRAIN_SEED_START}: lower seeds are evaluation scenes")
    if args.size % 32:
        parser.error("--size must be a multiple of 32 (the backbone's stride)")
    return args


def lr_factor(step: int, progress: float, warmup: int) -> float:
    """Multiplier of the peak rate: a linear warm-up over ``warmup`` steps times a cosine
    decay from 1 to ``MIN_LR_FRACTION`` over ``progress`` (the fraction of training done)."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return warm * (MIN_LR_FRACTION + (1.0 - MIN_LR_FRACTION) * cosine)


class DenseHeads(torch.nn.Module):
    """Training-only 1x1 classifiers on the pixel embeddings (stride 4) and on the last
    backbone stage (which the transformer decoder attends to), trained with per-pixel cross
    entropy against the semantic ground truth. Dense labels teach the backbone what circles,
    squares and triangles look like far faster than the set-matching loss alone, whose only
    class signal is one label per matched query. They are not part of the saved model.
    """

    def __init__(self, config: Any, num_labels: int) -> None:
        super().__init__()
        self.pixel = torch.nn.Conv2d(config.mask_feature_size, num_labels, 1)
        self.stage = torch.nn.Conv2d(config.backbone_config.hidden_sizes[-1], num_labels, 1)

    def loss(self, outputs: Any, semantic: torch.Tensor) -> torch.Tensor:
        """``semantic`` (B, H, W) int64 with 255 for void."""
        total = torch.zeros((), device=semantic.device)
        for head, features in (
            (self.pixel, outputs.pixel_decoder_last_hidden_state),
            (self.stage, outputs.encoder_last_hidden_state),
        ):
            stride = semantic.shape[-1] // features.shape[-1]
            target = semantic[:, stride // 2 :: stride, stride // 2 :: stride]  # the cell centres
            total = total + torch.nn.functional.cross_entropy(head(features), target, ignore_index=255)
        return total


def semantic_targets(masks: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
    """(B, H, W) int64 label per pixel from the per-segment masks, 255 where no segment is."""
    maps = []
    for image_masks, image_labels in zip(masks, labels, strict=True):
        semantic = torch.full(image_masks.shape[1:], 255, dtype=torch.int64)
        for mask, label in zip(image_masks, image_labels, strict=True):
            semantic[mask > 0] = label
        maps.append(semantic)
    return torch.stack(maps)


def loss_terms(
    model: MaskFormerForInstanceSegmentation,
    batch: Batch,
    device: torch.device,
    dense: DenseHeads | None = None,
    dense_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted Hungarian-matching loss (plus the dense loss), and its terms for the log."""
    pixels, masks, labels = batch
    # transformers 5.x drops the decoder's per-layer states unless they are asked for
    # explicitly, and then fails to build the auxiliary logits from them.
    aux = bool(model.config.use_auxiliary_loss)
    outputs = model(pixel_values=pixels.to(device), output_hidden_states=aux, output_auxiliary_logits=aux)
    # get_loss_dict's annotations are wrong: it takes lists, one tensor per image, and no aux as None.
    terms = model.get_loss_dict(
        outputs.masks_queries_logits,
        outputs.class_queries_logits,
        [m.to(device) for m in masks],  # type: ignore[arg-type]
        [c.to(device) for c in labels],  # type: ignore[arg-type]
        outputs.auxiliary_logits or None,  # type: ignore[arg-type]
    )
    loss = model.get_loss(terms)
    logged = {name.removeprefix("loss_"): terms[name].item() for name in FINAL_LAYER_TERMS}
    if dense is not None and dense_weight > 0:
        dense_loss = dense.loss(outputs, semantic_targets(masks, labels).to(device))
        loss = loss + dense_weight * dense_loss
        logged["dense"] = dense_loss.item()
    return loss, logged


def train(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(demo_config(args.queries, tuple(args.depths)), args.seed)
    if args.init_from is not None:
        trained = MaskFormerForInstanceSegmentation.from_pretrained(args.init_from)
        model.load_state_dict(trained.state_dict())
    model.to(device)  # type: ignore[arg-type]  # transformers types ``to`` for dtype casts only
    model.config.use_auxiliary_loss = args.aux_loss
    model.train()
    num_labels = len(LABELS)
    dense = DenseHeads(model.config, num_labels).to(device) if args.dense_weight > 0 else None
    parameters = [*model.parameters(), *(dense.parameters() if dense is not None else [])]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)
    loader = DataLoader(
        SceneStream(args.size, args.first_scene),
        batch_size=args.batch,
        collate_fn=collate,
        num_workers=args.workers,
        prefetch_factor=4 if args.workers else None,
        persistent_workers=args.workers > 0,
    )
    deadline = started + args.minutes * 60.0 - SAVE_RESERVE_S
    window: dict[str, list[float]] = defaultdict(list)
    history: list[dict[str, float]] = []
    first_batch_at: float | None = None
    progress = 0.0
    step = 0
    for step, batch in enumerate(loader):  # ``step`` is also the step count after the loop
        now = time.perf_counter()
        if first_batch_at is None:
            first_batch_at = now  # model set-up and DataLoader start-up are not training time
        if now >= deadline:
            break
        if args.steps is not None:
            progress = step / args.steps
            if step >= args.steps:
                break
        else:
            progress = (now - first_batch_at) / max(deadline - first_batch_at, 1e-9)
        rate = args.lr * lr_factor(step, progress, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = rate

        loss, terms = loss_terms(model, batch, device, dense, args.dense_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if args.clip > 0:
            terms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(parameters, args.clip))
        optimizer.step()

        window["loss"].append(loss.item())
        for name, value in terms.items():
            window[name].append(value)
        if (step + 1) % args.log_every == 0:
            elapsed = round(time.perf_counter() - started, 1)
            record = {"step": step + 1, "elapsed_s": elapsed, "lr": float(f"{rate:.3g}")}
            record |= {name: round(sum(values) / len(values), 4) for name, values in window.items()}
            history.append(record)
            window.clear()
            planned = f"/~{round(step / progress)}" if progress > 0 else ""
            details = "  ".join(f"{k} {v}" for k, v in record.items() if k not in ("step", "elapsed_s"))
            print(f"step {step + 1}{planned}  {record['elapsed_s']:.0f}s  {details}", flush=True)

    final_loss = history[-1]["loss"] if history else float("nan")
    return {
        "model": model,
        "steps": step,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "final_loss": final_loss,
        "history": history,
    }


def save(model: MaskFormerForInstanceSegmentation, args: argparse.Namespace, record: dict[str, Any]) -> None:
    """``save_pretrained`` checkpoint + preprocessor config + ``training.json``."""
    args.out.mkdir(parents=True, exist_ok=True)
    model.config.use_auxiliary_loss = False  # serving needs the last layer only
    model.train(False)
    model.cpu().save_pretrained(args.out)
    MaskFormerImageProcessor(
        size={"height": args.size, "width": args.size},
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    ).save_pretrained(args.out)
    command = [sys.executable, "-m", "demo.train", *sys.argv[1:]]
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    summary = {"command": command, "seed": args.seed, **record, "options": options}
    (args.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"training seeds from {args.first_scene}, size {args.size}, batch {args.batch}, lr {args.lr}", flush=True)
    result = train(args)
    model = result.pop("model")
    save(model, args, result)
    print(
        f"saved {args.out}: {result['steps']} steps in {result['wall_time_s']:.0f}s, final loss {result['final_loss']}",
        flush=True,
    )


if __name__ == "__main__":
    main()
