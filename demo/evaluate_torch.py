"""Evaluate a demo checkpoint through PyTorch and transformers' own post-processing.

python -m demo.evaluate_torch --checkpoint checkpoints/demo --images 200
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from transformers import MaskFormerForInstanceSegmentation, MaskFormerImageProcessor
from transformers.models.maskformer.modeling_maskformer import MaskFormerForInstanceSegmentationOutput

from demo.arguments import checkpoint_dir
from demo.data import normalize
from demo.evaluation import Prediction, Predictor, evaluate, markdown_table
from demo.scenes import STUFF_IDS

PANOPTIC_PARAMS = {"threshold": 0.5, "mask_threshold": 0.5, "overlap_mask_area_threshold": 0.8}


def stuff_queries_last(
    class_logits: torch.Tensor, mask_logits: torch.Tensor
) -> MaskFormerForInstanceSegmentationOutput:
    """Outputs for post-processing, queries reordered: things first, then stuff grouped by class.

    Args: ``class_logits (1, Q, K + 1)`` and ``mask_logits (1, Q, H/4, W/4)``.

    transformers' ``compute_segments`` resets its id counter to a fused stuff segment's id
    when a second query of that class appears, so a later thing can reuse an id already
    given to another thing (pinned in tests/export/test_panoptic_deviations.py). With no
    thing after the stuff queries no id repeats; the segments themselves do not depend on
    query order.
    """
    labels: list[int] = class_logits.argmax(-1)[0].tolist()  # (Q,), K = no object

    def rank(query: int) -> tuple[int, int, int]:
        label = labels[query]
        return (1, label, query) if label in STUFF_IDS else (0, 0, query)

    index = torch.tensor(sorted(range(len(labels)), key=rank))
    return MaskFormerForInstanceSegmentationOutput(
        class_queries_logits=class_logits[:, index], masks_queries_logits=mask_logits[:, index]
    )


def torch_predictor(checkpoint: Path, device: str = "cpu") -> tuple[Predictor, int]:
    """A ``Predictor`` for ``checkpoint`` and the square image side it was trained at."""
    model = MaskFormerForInstanceSegmentation.from_pretrained(checkpoint)
    model.to(device)  # type: ignore[arg-type]  # transformers types ``to`` for dtype casts only
    model.train(False)
    processor = MaskFormerImageProcessor.from_pretrained(checkpoint)
    size = int(processor.size["height"])

    @torch.inference_mode()
    def predict(image: npt.NDArray[np.uint8]) -> Prediction:
        target = [(image.shape[0], image.shape[1])]
        # The training normalization (the server's too), not processor(): no resize.
        pixels = torch.from_numpy(normalize(image))[None].to(device)
        outputs = model(pixel_values=pixels)
        if outputs.class_queries_logits is None or outputs.masks_queries_logits is None:
            raise RuntimeError("the model returned no logits")
        class_logits, mask_logits = outputs.class_queries_logits.cpu(), outputs.masks_queries_logits.cpu()
        plain = MaskFormerForInstanceSegmentationOutput(
            class_queries_logits=class_logits, masks_queries_logits=mask_logits
        )
        semantic = processor.post_process_semantic_segmentation(plain, target_sizes=target)[0]
        panoptic = processor.post_process_panoptic_segmentation(
            stuff_queries_last(class_logits, mask_logits),
            label_ids_to_fuse=set(STUFF_IDS),
            target_sizes=target,
            **PANOPTIC_PARAMS,
        )[0]
        # -1 marks "no segment at all" when no query clears the threshold.
        segment_map = panoptic["segmentation"].numpy().astype(np.int32).clip(min=0)
        segments = sorted({(int(s["id"]), int(s["label_id"])) for s in panoptic["segments_info"]})
        return Prediction(semantic.numpy(), segment_map, segments)

    return predict, size


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=checkpoint_dir, required=True)
    parser.add_argument("--images", type=int, default=200, help="evaluate on seeds 0..N-1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    predict, size = torch_predictor(args.checkpoint, args.device)
    report = evaluate(predict, range(args.images), size)
    print(f"# {args.checkpoint} (PyTorch + transformers post-processing, {size}x{size})\n")
    print(markdown_table(report))


if __name__ == "__main__":
    main()
