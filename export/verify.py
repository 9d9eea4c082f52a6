"""Check an exported graph against PyTorch on noise, at every canvas, before a bundle is written.

Each canvas is one case (a batch of two: one image filling the canvas, one letterboxed). Two
comparisons per case, as optimum's ``_run_validation`` does it (every output compared, every
failure collected, the max error reported):

1. the graph's raw ``class_logits`` / ``mask_logits`` against transformers' own forward;
2. the graph's fused outputs against ``model.reference`` applied to the graph's own logits,
   so that the reductions are checked alone, without near-ties in random weights amplifying
   1e-7 logit differences into flipped argmaxes.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import MaskFormerForInstanceSegmentation

from maskserve.bundle import INPUTS, OUTPUTS, AreaColumn, Canvas
from maskserve.export.onnx_export import sample_inputs
from maskserve.export.report import GRAPH, Check, Report, onnxruntime_failure
from maskserve.model.reference import reference_outputs
from maskserve.model.wrapper import raw_logits

# Decisions closer than this (in probability) to a tie or to the mask threshold are ties.
TIE_MARGIN = 1e-5
# (raw-logit max abs error, label-map pixel agreement, score max abs error)
# fp16 and int8 change the logits on purpose: their raw error is reported, not gated (judge
# them on a labelled set), while the fused head is still held to its reference.
LIMITS: dict[str, tuple[float | None, float, float]] = {
    "fp32": (1e-4, 0.9999, 1e-5),
    "fp16": (None, 0.9999, 1e-5),
    "int8": (None, 0.9999, 1e-5),
}
# float32 rounding grows with the values: mask logits of a trained model reach tens, where two
# correct graphs differ by ~1e-4 (a relative 6e-6). The raw-logit limit is the larger of the
# absolute one above and this fraction of the largest PyTorch logit; a baked-in shape branch
# or a wrong op is off by O(1).
LOGIT_RELATIVE = 1e-5


def verify(
    onnx_path: Path,
    hf_model: MaskFormerForInstanceSegmentation,
    canvases: Sequence[Canvas],
    precision: str,
    batch: int = 2,
    provider: str = "cpu",
) -> Report:
    """Every check at every canvas, in ONNX Runtime on ``provider`` (``cpu``, or ``cuda``: its
    CUDA execution provider against PyTorch on the GPU). A canvas where ONNX Runtime cannot run
    the graph is one failed check (naming the node) and the other canvases still run."""
    session = _session(onnx_path, provider)
    device = torch.device("cuda" if provider == "cuda" else "cpu")
    checks: list[Check] = []
    # In place (transformers types its own .to() for dtypes only); back on the CPU after, for
    # the image check and the caller.
    torch.nn.Module.to(hf_model, device)
    try:
        with _no_tf32():
            for canvas in canvases:
                checks.extend(_verify_canvas(session, hf_model, canvas, precision, batch, device))
    finally:
        torch.nn.Module.to(hf_model, "cpu")
    return Report(checks=checks, providers=session.get_providers())


def _session(onnx_path: Path, provider: str) -> ort.InferenceSession:
    """The graph in ONNX Runtime on ``provider``, never silently on another.

    On the CPU an fp16 graph is computed mostly in float32 (ONNX Runtime inserts casts around
    the operators it has no float16 kernel for), so only ``cuda`` checks the float16 arithmetic
    itself. TF32 is off there, as in the PyTorch reference: this checks the graph, not TF32.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a node that fails is reported in the table, not logged twice
    if provider == "cpu":
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None and "torch" not in sys.modules:
        preload()  # torch, imported first, has loaded the CUDA libraries already
    session = ort.InferenceSession(
        str(onnx_path), options, providers=[("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]
    )
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"the CUDA execution provider could not be created (got {session.get_providers()})")
    return session


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Full float32 matmuls and convolutions on the GPU (PyTorch allows TF32 in cuDNN by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _verify_canvas(
    session: ort.InferenceSession,
    hf_model: MaskFormerForInstanceSegmentation,
    size: Canvas,
    precision: str,
    batch: int,
    device: torch.device,
) -> list[Check]:
    logit_limit, agreement_limit, score_limit = LIMITS[precision]
    inputs = sample_inputs(batch, size, seed=size.height * 10_000 + size.width)
    feeds = {name: tensor.numpy() for name, tensor in zip(INPUTS, inputs, strict=True)}
    case = str(size)
    try:
        got = dict(zip(OUTPUTS, session.run(list(OUTPUTS), feeds), strict=True))
    except Exception as exc:  # ORT raises its own types; the node and the reason are what matter
        return [Check(case, GRAPH, "runs", 0.0, 1.0, True, detail=onnxruntime_failure(exc))]
    checks: list[Check] = []
    torch_class, torch_mask = (t.cpu() for t in raw_logits(hf_model, inputs.pixel_values.to(device)))
    for name, expected in (("class_logits", torch_class), ("mask_logits", torch_mask)):
        if got[name].shape != tuple(expected.shape):
            detail = f"shape {got[name].shape}, PyTorch {tuple(expected.shape)}"
            checks.append(Check(case, name, "shape_matches", 0.0, 1.0, True, detail=detail))
            return checks
        error = float(np.abs(got[name] - expected.numpy()).max())
        limit = None if logit_limit is None else max(logit_limit, LOGIT_RELATIVE * float(expected.abs().max()))
        checks.append(Check(case, name, "max_abs_error", error, limit, False))

    reference = reference_outputs(
        torch.from_numpy(got["class_logits"]),
        torch.from_numpy(got["mask_logits"]),
        inputs.image_sizes,
        inputs.score_threshold,
        inputs.mask_threshold,
        inputs.panoptic_upsampling,
        size.hw,
        margins=True,
    )
    checks.extend(compare_fused(case, got, {k: v.numpy() for k, v in reference.items()}, agreement_limit, score_limit))
    # End to end (PyTorch logits through the reference) is reported, not gated: with random
    # weights, near-tied queries make it flip on 1e-7 logit differences.
    e2e = reference_outputs(
        torch_class,
        torch_mask,
        inputs.image_sizes,
        inputs.score_threshold,
        inputs.mask_threshold,
        inputs.panoptic_upsampling,
        size.hw,
    )
    agreement = float((e2e["semantic_map"].numpy() == got["semantic_map"]).mean())
    checks.append(Check(case, "semantic_map", "e2e_agreement", agreement, None, True))
    return checks


def compare_fused(
    case: str, got: dict[str, np.ndarray], ref: dict[str, np.ndarray], agreement_limit: float, score_limit: float
) -> list[Check]:
    checks = []
    for name in ("semantic_map", "panoptic_map"):
        # A pixel whose decision is a tie within float rounding may go either way in a correct
        # graph (random weights are full of them); gate on the decided pixels, report the rest.
        equal = got[name] == ref[name]
        decided = ref[name.replace("_map", "_margin")] > TIE_MARGIN
        checks.append(Check(case, name, "agreement", float((equal | ~decided).mean()), agreement_limit, True))
        checks.append(Check(case, name, "raw_agreement", float(equal.mean()), None, True))
    checks.append(
        Check(
            case,
            "query_labels",
            "agreement",
            float((got["query_labels"] == ref["query_labels"]).mean()),
            agreement_limit,
            True,
        )
    )
    error = float(np.abs(got["query_scores"] - ref["query_scores"]).max())
    checks.append(Check(case, "query_scores", "max_abs_error", error, score_limit, False))
    # Areas count pixels against thresholds; a probability within an ulp of the threshold
    # may land on either side, so allow the label-map disagreement budget, at least 4 pixels.
    # The argmax and kept areas also move with every undecided pixel of the map, which may go
    # to either query (a trained model fed noise leaves a fifth of the pixels undecided).
    pixels = got["panoptic_map"].shape[-1] * got["panoptic_map"].shape[-2]
    undecided = (ref["panoptic_margin"] <= TIE_MARGIN).sum(axis=(-2, -1))  # (B,)
    area_error = np.abs(got["panoptic_areas"].astype(np.int64) - ref["panoptic_areas"])  # (B, Q, 4)
    tied = [AreaColumn.ARGMAX, AreaColumn.KEPT]
    area_error[:, :, tied] = np.maximum(area_error[:, :, tied] - undecided[:, None, None], 0)
    area_limit = max(4.0, (1 - agreement_limit) * pixels)
    checks.append(Check(case, "panoptic_areas", "error_px_beyond_ties", float(area_error.max()), area_limit, False))
    matched, mask_agreement = _match_instances(got, ref, score_limit)
    checks.append(Check(case, "instance_scores", "matched_fraction", matched, agreement_limit, True))
    checks.append(Check(case, "instance_masks", "agreement", mask_agreement, agreement_limit, True))
    return checks


def _match_instances(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], score_limit: float) -> tuple[float, float]:
    """Match top-k entries by (label, score) irrespective of order.

    Entries whose class scores tie to the last bit can come out of TopK in either order, so
    each graph entry is paired with an unused reference entry of the same label and score.
    Returns the matched fraction and the pixel agreement of the matched masks.
    """
    matched = equal_pixels = total_pixels = 0
    total = got["instance_labels"].size
    for b in range(got["instance_labels"].shape[0]):
        used: set[int] = set()
        for i, (label, score) in enumerate(zip(got["instance_labels"][b], got["instance_scores"][b], strict=True)):
            candidates = [
                j
                for j in np.flatnonzero(ref["instance_labels"][b] == label)
                if j not in used and abs(ref["instance_scores"][b, j] - score) <= score_limit
            ]
            if not candidates:
                continue
            j = i if i in candidates else int(candidates[0])
            used.add(j)
            matched += 1
            equal_pixels += int((got["instance_masks"][b, i] == ref["instance_masks"][b, j]).sum())
            total_pixels += got["instance_masks"][b, i].size
    return matched / max(total, 1), equal_pixels / max(total_pixels, 1)
