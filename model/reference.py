"""Plain per-image PyTorch reference of ``FusedMaskHead``'s reductions.

Written the way transformers' ``post_process_*`` and the paper's ``mask_former_model.py`` are
written (one image at a time, dropped queries removed before the argmax, explicit loops over
queries), so that it is an independent check on the batched, branch-free fused head. It starts
from the raw logits, which lets verification feed it the exported graph's own logits and
compare the reductions alone.

Shapes: ``B`` batch, ``Q`` queries, ``K`` labels, ``H x W`` canvas, ``h x w`` = ``H/4 x W/4``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from maskserve.bundle import AreaColumn, PanopticUpsampling


@torch.inference_mode()
def reference_outputs(
    class_logits: Tensor,
    mask_logits: Tensor,
    image_sizes: Tensor,
    score_threshold: Tensor,
    mask_threshold: Tensor,
    panoptic_upsampling: Tensor,
    canvas_hw: tuple[int, int],
    margins: bool = False,
) -> dict[str, Tensor]:
    """Reference for every reduced output of the graph.

    Args:
        class_logits: ``(B, Q, K+1)``.
        mask_logits: ``(B, Q, h, w)``.
        image_sizes: ``(B, 2)`` valid height and width inside the canvas.
        score_threshold: ``(B,)``; mask_threshold: ``(B,)``.
        panoptic_upsampling: ``(B,)``, ``maskserve.bundle.PanopticUpsampling`` per image.
        canvas_hw: ``(H, W)``.
        margins: also return ``semantic_margin`` and ``panoptic_margin`` ``(B, H, W)``: how far
            each pixel's decision is from a tie (top-1 minus top-2 score; for the panoptic map
            also the winner's distance to the mask threshold). Where a margin is within float
            rounding, two correct implementations may decide differently.
    """
    per_image = [
        _one_image(
            class_logits[i],
            mask_logits[i],
            (int(image_sizes[i, 0]), int(image_sizes[i, 1])),
            float(score_threshold[i]),
            float(mask_threshold[i]),
            PanopticUpsampling(int(panoptic_upsampling[i])),
            canvas_hw,
        )
        for i in range(class_logits.shape[0])
    ]
    out = {name: torch.stack([item[name] for item in per_image]) for name in per_image[0]}
    if not margins:
        out = {name: value for name, value in out.items() if not name.endswith("_margin")}
    return out


def _one_image(
    class_logits: Tensor,
    mask_logits: Tensor,
    valid_hw: tuple[int, int],
    score_threshold: float,
    mask_threshold: float,
    upsampling: PanopticUpsampling,
    canvas_hw: tuple[int, int],
) -> dict[str, Tensor]:
    valid_h, valid_w = valid_hw
    class_probs = class_logits.softmax(-1)
    mask_probs = mask_logits.sigmoid()

    # Semantic, as transformers' post_process_semantic_segmentation.
    logits = torch.einsum("qc,qhw->chw", class_probs[:, :-1], mask_probs)
    resized = F.interpolate(logits[None], size=canvas_hw, mode="bilinear", align_corners=False)[0]
    semantic = resized.argmax(0).to(torch.int32)
    semantic[valid_h:, :] = -1
    semantic[:, valid_w:] = -1
    top2 = resized.topk(min(2, resized.shape[0]), dim=0).values
    semantic_margin = top2[0] - top2[-1] if resized.shape[0] > 1 else torch.full(canvas_hw, torch.inf)

    return {
        "semantic_map": semantic,
        "semantic_margin": semantic_margin,
        **_panoptic(class_probs, mask_logits, valid_hw, score_threshold, mask_threshold, upsampling, canvas_hw),
        **_instance(class_probs, mask_logits, valid_hw, mask_threshold),
    }


def _panoptic(
    class_probs: Tensor,
    mask_logits: Tensor,
    valid_hw: tuple[int, int],
    score_threshold: float,
    mask_threshold: float,
    upsampling: PanopticUpsampling,
    canvas_hw: tuple[int, int],
) -> dict[str, Tensor]:
    num_queries, num_classes_plus_one = class_probs.shape
    valid_h, valid_w = valid_hw
    scores, labels = class_probs.max(-1)
    keep = labels.ne(num_classes_plus_one - 1) & (scores > score_threshold)
    kept_ids = torch.nonzero(keep).flatten()

    if upsampling is PanopticUpsampling.LOGITS:
        # MaskFormer upsamples the logits in `forward` and takes the sigmoid in `panoptic_inference`:
        # https://github.com/facebookresearch/MaskFormer/blob/da3e60d85fdeedcb31476b5edd7d328826ce56cc/mask_former/mask_former_model.py#L193-L199
        # https://github.com/facebookresearch/MaskFormer/blob/da3e60d85fdeedcb31476b5edd7d328826ce56cc/mask_former/mask_former_model.py#L250
        logits = F.interpolate(mask_logits[None], size=canvas_hw, mode="bilinear", align_corners=False)[0]
        probs = logits.sigmoid()
    else:
        # transformers' compute_segments: `interpolate(mask_probs, size=target_size)`.
        probs = F.interpolate(mask_logits.sigmoid()[None], size=canvas_hw, mode="bilinear", align_corners=False)[0]
    probs = probs[:, :valid_h, :valid_w]
    weighted = probs * scores[:, None, None]

    panoptic_map = torch.full(canvas_hw, -1, dtype=torch.int32)
    margin = torch.full(canvas_hw, torch.inf)
    areas = torch.zeros((num_queries, 4), dtype=torch.int32)
    for q in range(num_queries):
        areas[q, AreaColumn.MASK] = int((probs[q] >= mask_threshold).sum())
        areas[q, AreaColumn.WEIGHTED_MASK] = int((weighted[q] >= mask_threshold).sum())
    if len(kept_ids) > 0:
        local_winner = weighted[kept_ids].argmax(0)
        winner = kept_ids[local_winner]
        winner_prob = probs.gather(0, winner[None])[0]
        on = winner_prob >= mask_threshold
        panoptic_map[:valid_h, :valid_w] = torch.where(on, winner, winner + num_queries).to(torch.int32)
        to_threshold = (winner_prob - mask_threshold).abs()
        if len(kept_ids) > 1:
            top2 = weighted[kept_ids].topk(2, dim=0).values
            to_threshold = torch.minimum(to_threshold, top2[0] - top2[1])
        margin[:valid_h, :valid_w] = to_threshold
        for q in kept_ids.tolist():
            region = winner == q
            areas[q, AreaColumn.ARGMAX] = int(region.sum())
            areas[q, AreaColumn.KEPT] = int((region & on).sum())
    return {
        "panoptic_map": panoptic_map,
        "panoptic_margin": margin,
        "query_labels": labels.to(torch.int32),
        "query_scores": scores,
        "panoptic_areas": areas,
    }


def _instance(
    class_probs: Tensor, mask_logits: Tensor, valid_hw: tuple[int, int], mask_threshold: float
) -> dict[str, Tensor]:
    """As transformers' post_process_instance_segmentation, before its resize."""
    num_queries, num_classes_plus_one = class_probs.shape
    num_classes = num_classes_plus_one - 1
    scores = class_probs[:, :-1]
    labels = torch.arange(num_classes).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
    class_scores, topk_indices = scores.flatten(0, 1).topk(num_queries, sorted=True)
    topk_labels = labels[topk_indices]
    query_index = torch.div(topk_indices, num_classes, rounding_mode="floor")
    mask_pred = mask_logits[query_index]

    t = torch.tensor(mask_threshold, dtype=torch.float32)
    logit_threshold = torch.log(t) - torch.log1p(-t)
    binary = mask_pred > logit_threshold
    low_h, low_w = -(-valid_hw[0] // 4), -(-valid_hw[1] // 4)
    binary[:, low_h:, :] = False
    binary[:, :, low_w:] = False
    pred_masks = binary.float()
    mean_prob = (mask_pred.sigmoid().flatten(1) * pred_masks.flatten(1)).sum(1) / (pred_masks.flatten(1).sum(1) + 1e-6)
    return {
        "instance_labels": topk_labels.to(torch.int32),
        "instance_scores": class_scores * mean_prob,
        "instance_masks": binary.to(torch.uint8),
    }
