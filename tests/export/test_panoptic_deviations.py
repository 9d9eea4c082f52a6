"""Where the default panoptic rule (``maskformer``) and ``mask2former`` differ from transformers.

Each test builds logits by hand, runs transformers' ``post_process_panoptic_segmentation``
and our host post-processing (on the graph outputs as computed by ``model.reference``, the
verified twin of the exported head), and pins the documented difference.
See docs/postprocessing.md; tests/service/test_panoptic_rules.py holds each rule to its source.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from transformers import MaskFormerImageProcessor

from maskserve.model.reference import reference_outputs
from maskserve.service.postprocess import PanopticRule, PostProcessor, TaskParams
from maskserve.service.preprocess import Letterbox

H = W = 32
ISTHING = np.array([True, True, False])  # labels 0, 1 are things, 2 is stuff
NO_OBJECT = 3


def _class_logits(labels_scores: list[tuple[int, float]]) -> torch.Tensor:
    """Logits whose softmax gives each query (label, score) with the rest spread evenly."""
    rows = []
    for label, score in labels_scores:
        probs = torch.full((NO_OBJECT + 1,), (1 - score) / NO_OBJECT)
        probs[label] = score
        rows.append(probs.log())
    return torch.stack(rows)[None]


def _inside(mask: np.ndarray, start: int, stop: int) -> bool:
    """Mask covers columns [start, stop) away from the edges, where bilinear upsampling of the
    1/4-resolution masks blends neighbouring bands."""
    return bool(mask[:, start + 2 : stop - 2].all())


def _masks(regions: list[tuple[slice, float]]) -> torch.Tensor:
    """(1, Q, H/4, W/4) logits: probability p inside each query's column range, 0.01 outside."""
    masks = torch.full((len(regions), H // 4, W // 4), 0.01)
    for q, (columns, p) in enumerate(regions):
        masks[q, :, columns] = p
    return torch.logit(masks)[None]


def _ours(class_logits, mask_logits, threshold, mask_threshold, overlap, rule):
    outputs = reference_outputs(
        class_logits,
        mask_logits,
        torch.tensor([[H, W]]),
        torch.tensor([threshold]),
        torch.tensor([mask_threshold]),
        torch.tensor([rule.upsampling]),
        (H, W),
    )
    image = {k: v[0].numpy() for k, v in outputs.items()}
    params = TaskParams("panoptic", threshold, mask_threshold, overlap)
    postprocessor = PostProcessor([str(i) for i in range(len(ISTHING))], ISTHING, rule)
    segments = postprocessor(image, Letterbox((H, W), (H, W), (H, W)), params)
    return [(s.label_id, s.mask()) for s in segments]


def _transformers(class_logits, mask_logits, threshold, mask_threshold, overlap):
    outputs = SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits)
    return MaskFormerImageProcessor().post_process_panoptic_segmentation(
        outputs,
        threshold=threshold,
        mask_threshold=mask_threshold,
        overlap_mask_area_threshold=overlap,
        label_ids_to_fuse={2},
        target_sizes=[(H, W)],
    )[0]


def test_original_area_is_unweighted_in_maskformer() -> None:
    # Query 1 is confident in its mask (0.9) but its class score is 0.52: transformers weighs
    # the mask by the score (0.47 < 0.5), finds no "original area", and drops the query.
    class_logits = _class_logits([(0, 0.9), (1, 0.52)])
    mask_logits = _masks([(slice(0, 4), 0.9), (slice(4, 8), 0.9)])
    hf = _transformers(class_logits, mask_logits, 0.5, 0.5, 0.8)
    assert [info["label_id"] for info in hf["segments_info"]] == [0]

    for rule in (PanopticRule.MASKFORMER, PanopticRule.MASK2FORMER):
        ours = _ours(class_logits, mask_logits, 0.5, 0.5, 0.8, rule)
        assert [label for label, _ in ours] == [0, 1]
        assert _inside(ours[1][1], 16, 32) and not ours[1][1][:, :14].any()

    compat = _ours(class_logits, mask_logits, 0.5, 0.5, 0.8, PanopticRule.TRANSFORMERS)
    assert [label for label, _ in compat] == [0]


def test_segment_ids_stay_unique_after_stuff_fusion() -> None:
    # Queries: stuff(2) | thing(0) | stuff(2) again | thing(1), in four column bands.
    class_logits = _class_logits([(2, 0.9), (0, 0.9), (2, 0.9), (1, 0.9)])
    mask_logits = _masks([(slice(0, 2), 0.95), (slice(2, 4), 0.95), (slice(4, 6), 0.95), (slice(6, 8), 0.95)])
    hf = _transformers(class_logits, mask_logits, 0.5, 0.5, 0.8)
    ids = [(info["id"], info["label_id"]) for info in hf["segments_info"]]
    # transformers resets its counter to the fused stuff id, so the last thing reuses id 2.
    assert ids == [(1, 2), (2, 0), (1, 2), (2, 1)]
    segmentation = hf["segmentation"].numpy()
    assert _inside(segmentation == 2, 8, 16) and _inside(segmentation == 2, 24, 32)  # two things, one id

    for rule in PanopticRule:
        ours = _ours(class_logits, mask_logits, 0.5, 0.5, 0.8, rule)
        assert [label for label, _ in ours] == [2, 0, 1]
        stuff, thing0, thing1 = (mask for _, mask in ours)
        assert _inside(stuff, 0, 8) and _inside(stuff, 16, 24) and not stuff[:, 10:14].any()
        assert _inside(thing0, 8, 16) and not thing0[:, 18:].any()
        assert _inside(thing1, 24, 32) and not thing1[:, :22].any()


def test_mask2former_segments_exclude_pixels_below_the_mask_threshold() -> None:
    # One query wins everywhere (the only kept one) but is above 0.5 on its left half only.
    class_logits = _class_logits([(0, 0.9), (NO_OBJECT, 0.9)])
    mask_logits = _masks([(slice(0, 4), 0.9), (slice(0, 8), 0.9)])
    hf = _transformers(class_logits, mask_logits, 0.5, 0.5, 0.4)
    assert (hf["segmentation"].numpy() == 1).all()  # the whole argmax region

    ((label, mask2former_mask),) = _ours(class_logits, mask_logits, 0.5, 0.5, 0.4, PanopticRule.MASK2FORMER)
    assert label == 0 and _inside(mask2former_mask, 0, 16) and not mask2former_mask[:, 18:].any()
    for rule in (PanopticRule.MASKFORMER, PanopticRule.TRANSFORMERS):  # MaskFormer keeps the argmax region too
        ((_, whole),) = _ours(class_logits, mask_logits, 0.5, 0.5, 0.4, rule)
        assert whole.all()
