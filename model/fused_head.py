"""The paper's mask step fused with the per-task reductions, written to trace into ONNX.

Everything here runs inside the exported graph, so that only compact tensors (label maps,
per-query scalars and 1/4-resolution uint8 masks) leave the accelerator. The same math is
written as plain per-image PyTorch in ``model/reference.py``; the tests hold one to the other.

Shapes: ``B`` batch, ``Q`` queries, ``K`` labels (without no-object), ``H x W`` the canvas
(the padded network input), ``h x w = H/4 x W/4`` the mask resolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from maskserve.bundle import PanopticUpsampling


class FusedMaskHead(nn.Module):
    """Mask step + semantic/panoptic/instance reductions for a batch of letterboxed images."""

    def forward(
        self,
        class_logits: Tensor,
        mask_embeddings: Tensor,
        pixel_embeddings: Tensor,
        image_sizes: Tensor,
        score_threshold: Tensor,
        mask_threshold: Tensor,
        panoptic_upsampling: Tensor,
        canvas_hw: tuple[int, int],
    ) -> dict[str, Tensor]:
        """Run the fused head.

        Args:
            class_logits: ``(B, Q, K+1)`` raw class logits; the last class is no-object.
            mask_embeddings: ``(B, Q, C)`` per-query mask embeddings.
            pixel_embeddings: ``(B, C, h, w)`` per-pixel embeddings at 1/4 resolution.
            image_sizes: ``(B, 2)`` int64, the valid (letterboxed) height and width of each
                image inside the canvas, in canvas pixels; the rest is padding.
            score_threshold: ``(B,)`` float32, panoptic query score threshold (``score >
                t`` keeps a query, as in the paper and transformers).
            mask_threshold: ``(B,)`` float32, probability at which a mask pixel counts as on.
            panoptic_upsampling: ``(B,)`` int32, ``maskserve.bundle.PanopticUpsampling`` per image.
            canvas_hw: ``(H, W)`` of the network input (symbolic ints while tracing).

        Returns:
            A dict of the graph outputs, see ``OUTPUTS`` in ``maskserve/bundle.py``.
        """
        height, width = canvas_hw
        num_queries = class_logits.shape[1]
        # The paper's mask step: one dot product per (query, pixel), then the sigmoid.
        mask_logits = torch.einsum("bqc,bchw->bqhw", mask_embeddings, pixel_embeddings)
        mask_probs = mask_logits.sigmoid()
        class_probs = class_logits.softmax(dim=-1)

        semantic_map = letterboxed_semantic_map(class_probs, mask_probs, image_sizes, (height, width))
        panoptic = panoptic_reduction(
            class_probs,
            mask_logits,
            mask_probs,
            image_sizes,
            score_threshold,
            mask_threshold,
            panoptic_upsampling,
            (height, width),
        )
        instance = instance_reduction(class_probs, mask_logits, image_sizes, mask_threshold, num_queries)
        return {
            "class_logits": class_logits,
            "mask_logits": mask_logits,
            "semantic_map": semantic_map,
            **panoptic,
            **instance,
        }


def letterboxed_semantic_map(
    class_probs: Tensor, mask_probs: Tensor, image_sizes: Tensor, canvas_hw: tuple[int, int]
) -> Tensor:
    """``(B, H, W)`` int64: ``semantic_reduction``'s label map, -1 outside each image's
    letterboxed extent (``image_sizes``, ``(B, 2)``)."""
    valid = _valid_region(image_sizes, *canvas_hw)  # (B, H, W) bool
    semantic_map = semantic_reduction(class_probs, mask_probs, canvas_hw)
    return torch.where(valid, semantic_map, torch.full_like(semantic_map, -1))


def _valid_region(image_sizes: Tensor, height: int, width: int) -> Tensor:
    """``(B, H, W)`` bool: True inside each image's letterboxed extent."""
    device = image_sizes.device
    rows = torch.arange(height, device=device).view(1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, -1)
    return (rows < image_sizes[:, 0].view(-1, 1, 1)) & (cols < image_sizes[:, 1].view(-1, 1, 1))


def semantic_reduction(class_probs: Tensor, mask_probs: Tensor, canvas_hw: tuple[int, int]) -> Tensor:
    """``(B, H, W)`` int32 label map, in transformers' order.

    class-prob x mask-prob summed over queries at 1/4 resolution, bilinear upsample, argmax.
    """
    segmentation = torch.einsum("bqk,bqhw->bkhw", class_probs[..., :-1], mask_probs)
    upsampled = F.interpolate(segmentation, size=canvas_hw, mode="bilinear", align_corners=False)
    return upsampled.argmax(dim=1).to(torch.int32)


def panoptic_reduction(
    class_probs: Tensor,
    mask_logits: Tensor,
    mask_probs: Tensor,
    image_sizes: Tensor,
    score_threshold: Tensor,
    mask_threshold: Tensor,
    panoptic_upsampling: Tensor,
    canvas_hw: tuple[int, int],
) -> dict[str, Tensor]:
    """Winning-query map over the kept queries plus the per-query facts the host needs.

    The masks reach the canvas in the order ``panoptic_upsampling`` (``(B,)``) picks per image:
    bilinear on the logits, then the sigmoid (MaskFormer, Mask2Former), or bilinear on
    ``mask_probs`` (transformers). ``mask_logits`` and ``mask_probs`` are ``(B, Q, h, w)``.

    Returns:
        ``panoptic_map`` ``(B, H, W)`` int32: ``q`` where kept query ``q`` wins the
        score-weighted argmax and its own probability is >= the mask threshold, ``q + Q``
        where it wins but is below the threshold, ``-1`` on padding or when no query is kept.
        ``query_labels`` ``(B, Q)`` int32 (``K`` is no-object), ``query_scores`` ``(B, Q)``
        float32, and ``panoptic_areas`` ``(B, Q, 4)`` int32 pixel counts inside the valid
        region: the argmax region, the argmax region above the mask threshold, the mask above
        the threshold (the paper's original area), and the score-weighted mask above the
        threshold (transformers' original area); the column names are
        ``maskserve.bundle.PANOPTIC_AREA_COLUMNS``.

    Every ``(B, Q, H, W)`` tensor costs a full memory pass on a CPU, so the few that exist are
    plain arithmetic (no broadcast ``where``), and counts are float32 sums: exact for integers
    below 2**24, which covers the largest canvas (4096 x 4096).
    """
    num_labels = class_probs.shape[-1] - 1
    batch, num_queries = class_probs.shape[0], class_probs.shape[1]
    height, width = canvas_hw
    scores, labels = class_probs.max(dim=-1)  # (B, Q)
    keep = (labels != num_labels) & (scores > score_threshold.view(-1, 1))

    # One bilinear pass serves both orders: pick the logits or the probabilities at 1/4
    # resolution, upsample, and take the sigmoid of the upsampled logits. `where` keeps each
    # order's values exact (an arithmetic blend would round).
    logits_first = (panoptic_upsampling == PanopticUpsampling.LOGITS).view(-1, 1, 1, 1)
    upsampled = F.interpolate(
        torch.where(logits_first, mask_logits, mask_probs), size=canvas_hw, mode="bilinear", align_corners=False
    )
    probs = torch.where(logits_first, upsampled.sigmoid(), upsampled)
    weighted = probs * scores.view(batch, -1, 1, 1)
    # Dropped queries can never win: weighted probabilities are >= 0 and theirs drop by 2.
    penalty = (keep.to(probs.dtype) - 1.0).mul(2.0).view(batch, -1, 1, 1)
    winner = (weighted + penalty).argmax(dim=1)  # (B, H, W)
    winner_prob = torch.gather(probs, 1, winner.unsqueeze(1)).squeeze(1)
    threshold = mask_threshold.view(-1, 1, 1)
    winner_on = winner_prob >= threshold
    live = _valid_region(image_sizes, height, width) & keep.any(dim=1).view(-1, 1, 1)
    minus_one = torch.full_like(winner, -1)
    panoptic_map = torch.where(live, winner + num_queries * (~winner_on).to(winner.dtype), minus_one)

    query_ids = torch.arange(num_queries, device=winner.device).view(1, -1, 1, 1)
    argmax_owner = torch.where(live, winner, minus_one).unsqueeze(1)
    kept_owner = torch.where(live & winner_on, winner, minus_one).unsqueeze(1)
    rows = (torch.arange(height, device=winner.device).view(1, 1, 1, -1) < image_sizes[:, 0].view(-1, 1, 1, 1)).to(
        probs.dtype
    )  # (B, 1, 1, H)
    cols = (torch.arange(width, device=winner.device).view(1, 1, -1, 1) < image_sizes[:, 1].view(-1, 1, 1, 1)).to(
        probs.dtype
    )  # (B, 1, W, 1)
    threshold4 = threshold.unsqueeze(1)

    def count(indicator: Tensor) -> Tensor:
        return indicator.to(probs.dtype).sum(dim=(2, 3))

    def count_inside(indicator: Tensor) -> Tensor:
        # rows^T . indicator . cols: the valid rectangle's count without a masked copy.
        return torch.matmul(rows, torch.matmul(indicator.to(probs.dtype), cols)).view(batch, num_queries)

    areas = torch.stack(
        [
            count(argmax_owner == query_ids),
            count(kept_owner == query_ids),
            count_inside(probs >= threshold4),
            count_inside(weighted >= threshold4),
        ],
        dim=-1,
    ).to(torch.int32)
    return {
        "panoptic_map": panoptic_map.to(torch.int32),
        "query_labels": labels.to(torch.int32),
        "query_scores": scores,
        "panoptic_areas": areas,
    }


def instance_reduction(
    class_probs: Tensor,
    mask_logits: Tensor,
    image_sizes: Tensor,
    mask_threshold: Tensor,
    top_k: int,
) -> dict[str, Tensor]:
    """Top-k (query, label) pairs with transformers' instance score, masks at 1/4 resolution.

    Returns:
        ``instance_labels`` ``(B, k)`` int32, ``instance_scores`` ``(B, k)`` float32 (class
        score x mean mask probability inside the binary mask), sorted by class score, and
        ``instance_masks`` ``(B, k, h, w)`` uint8 binary masks at 1/4 resolution, cleared
        outside the letterboxed extent.
    """
    batch, num_queries, num_classes_plus_one = class_probs.shape
    num_classes = num_classes_plus_one - 1
    flat = class_probs[..., :-1].reshape(batch, num_queries * num_classes)
    class_scores, flat_index = flat.topk(top_k, dim=1, sorted=True)
    labels = flat_index % num_classes
    query_index = torch.div(flat_index, num_classes, rounding_mode="floor")

    low_h, low_w = mask_logits.shape[-2], mask_logits.shape[-1]
    gather_index = query_index.view(batch, top_k, 1, 1).expand(batch, top_k, low_h, low_w)
    logits = torch.gather(mask_logits, 1, gather_index)  # (B, k, h, w)

    # sigmoid(x) > t  <=>  x > logit(t); exact at t = 0.5, where transformers uses x > 0.
    logit_threshold = (torch.log(mask_threshold) - torch.log1p(-mask_threshold)).view(-1, 1, 1, 1)
    # A 1/4-resolution cell is valid when any of its canvas pixels is (ceil division).
    valid_low = _valid_region(torch.div(image_sizes + 3, 4, rounding_mode="floor"), low_h, low_w)
    binary = (logits > logit_threshold) & valid_low.unsqueeze(1)
    binary_f = binary.to(logits.dtype)
    mean_prob = (logits.sigmoid() * binary_f).sum(dim=(2, 3)) / (binary_f.sum(dim=(2, 3)) + 1e-6)
    return {
        "instance_labels": labels.to(torch.int32),
        "instance_scores": class_scores * mean_prob,
        "instance_masks": binary.to(torch.uint8),
    }
