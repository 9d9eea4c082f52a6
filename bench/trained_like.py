"""Random MaskFormer weights that answer like a trained model, reproducibly.

A randomly initialised MaskFormer scores every query near 1/(K+1) and draws masks near 0.5
everywhere, so nothing passes a 0.5 threshold and every pixel is a near-tie: comparing runtimes
on such outputs measures noise (FP16 flips pixels that no decision separates). A trained model is
decisive: 10-30 queries score high with mixed thing and stuff labels, the rest say "no object",
and each mask is a coherent region with large logits except near its edges. Without training,
``make_trained_like`` gets there from a random body by setting four things, each calibrated on a
few images of the canvas the model will serve:

- query embeddings of unit scale and cross-attention 20x sharper (as ``tests/checkpoints.py``
  does), so that queries read different places of the image and their states differ;
- the class head: random label directions scaled so that a query's best label leads its second by
  a median of 3 logits, and a "no object" bias set so that on average ``kept`` queries per image
  score above 0.5. Labels follow what each query reads: mixed things and stuff, varying by image;
- the mask head's last layer: mask embeddings in the span of the leading principal components of
  the pixel decoder's features (smooth over the image, so masks are coherent regions), offset so
  that a mask covers about ``coverage`` of the image and scaled so that the median mask logit is 6
  in magnitude: decided pixels everywhere but at the edges.

Everything is drawn from ``seed`` and fitted in float64 on the CPU: the same checkpoint wherever it
is built with the same torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch
from transformers import MaskFormerForInstanceSegmentation

# ImageNet statistics, which MaskFormerImageProcessor normalizes with by default.
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def pixel_values(images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
    """``(B, 3, H, W)`` normalized float32 from ``(H, W, 3)`` uint8 RGB images of one size."""
    stacked = (np.stack(images).astype(np.float32) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)))


def _features(model: MaskFormerForInstanceSegmentation, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The decoder's query states ``(B, Q, C)``, the mask head's last-layer inputs ``(B, Q, C')``
    and the pixel decoder's features ``(B, C, H/4, W/4)``."""
    captured: list[torch.Tensor] = []
    last = _last_linear(model.mask_embedder)
    hook = last.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    try:
        with torch.inference_mode():
            out = model.model(pixels, return_dict=True)
            model.mask_embedder(out.transformer_decoder_last_hidden_state)
    finally:
        hook.remove()
    return (
        out.transformer_decoder_last_hidden_state.double(),
        captured[0].double(),
        out.pixel_decoder_last_hidden_state.double(),
    )


def _last_linear(module: torch.nn.Module) -> torch.nn.Linear:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]


def _bisect(count: Callable[[float], float], target: float, low: float, high: float) -> float:
    """The x in [low, high] where the increasing ``count(x)`` reaches ``target``."""
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if count(middle) < target else (low, middle)
    return (low + high) / 2


def _query_basis(values: torch.Tensor, count: int) -> torch.Tensor:
    """``(count, C)`` directions along which the queries of one image differ most, whitened.

    ``values`` ``(B, Q, C)``: the per-image mean over queries is what all of an image's queries
    share (a head reading it gives every query the same label and mask: duplicates), so its span
    is projected out, then the leading principal components of what is left are taken.
    """
    image_means = values.mean(1)  # (B, C)
    shared = torch.linalg.svd(image_means - image_means.mean(0), full_matrices=False)[2]
    shared = shared[: max(0, min(len(values) - 1, shared.shape[0]))]
    residual = (values - image_means[:, None]).reshape(-1, values.shape[-1])
    residual = residual - (residual @ shared.T) @ shared
    _, singular, components = torch.linalg.svd(residual, full_matrices=False)
    count = min(count, int((singular > singular[0] * 1e-6).sum()))
    whitened: torch.Tensor = components[:count] / (singular[:count, None] / len(residual) ** 0.5)
    return whitened


def make_trained_like(
    model: MaskFormerForInstanceSegmentation,
    calibration: Sequence[npt.NDArray[np.uint8]],
    kept: float = 20.0,
    coverage: float = 0.12,
    seed: int = 0,
) -> dict[str, float]:
    """Set ``model``'s query embeddings, cross-attention, class head and last mask-head layer in
    place (see the module docstring), calibrated on ``calibration`` images of one canvas. Returns
    the fitted scales."""
    generator = torch.Generator().manual_seed(seed)
    decoder = model.model.transformer_module
    with torch.no_grad():
        decoder.queries_embedder.weight.copy_(torch.randn(decoder.queries_embedder.weight.shape, generator=generator))
        for layer in decoder.decoder.layers:
            layer.encoder_attn.q_proj.weight.mul_(20.0)
            layer.encoder_attn.k_proj.weight.mul_(20.0)
    states, mask_inputs, pixel_features = _features(model, pixel_values(calibration))
    batch, queries, width = states.shape
    num_labels = model.class_predictor.out_features - 1  # K labels and "no object"

    # Class head: logits = scale * G h for the labels; "no object" is its bias alone.
    directions = torch.randn(num_labels, width, generator=generator, dtype=torch.float64) / width**0.5
    raw = states @ directions.T  # (B, Q, K)
    top2 = raw.topk(2, dim=-1).values
    scale = 3.0 / float((top2[..., 0] - top2[..., 1]).median())
    logits = raw * scale

    def above_half(no_object: float) -> float:
        full = torch.cat([logits, torch.full((batch, queries, 1), no_object, dtype=logits.dtype)], dim=-1)
        return -float((full.softmax(-1)[..., :-1].max(-1).values > 0.5).sum(-1).float().mean())

    no_object = _bisect(above_half, -kept, -50.0, 50.0)
    with torch.no_grad():
        model.class_predictor.weight.zero_()
        model.class_predictor.weight[:num_labels] = (directions * scale).float()
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[num_labels] = no_object

    # Mask head: e = s (V^T diag(sigma) R z) - s c mean/|mean|^2, so m(x) = e . p(x).
    flat = pixel_features.permute(0, 2, 3, 1).reshape(-1, pixel_features.shape[1])  # (N, C)
    mean = flat.mean(0)
    _, singular, components = torch.linalg.svd(flat - mean, full_matrices=False)
    leading = min(16, len(singular))
    basis = _query_basis(mask_inputs, 16)
    mix = torch.randn(leading, len(basis), generator=generator, dtype=torch.float64) @ basis
    projection = components[:leading].T @ (singular[:leading, None] / singular[0] * mix)  # (C, C')
    sample = flat[torch.randperm(len(flat), generator=generator)[:4096]]
    along = (mask_inputs.reshape(-1, mask_inputs.shape[-1]) @ projection.T) @ sample.T  # (B*Q, n)
    offset = (sample @ mean / mean.dot(mean))[None, :]  # about 1 everywhere
    cut = _bisect(lambda c: -float((along - c * offset > 0).double().mean()), -coverage, -1e6, 1e6)
    mask_scale = 6.0 / float((along - cut * offset).abs().median())
    last = _last_linear(model.mask_embedder)
    with torch.no_grad():
        last.weight.copy_((mask_scale * projection).float())
        last.bias.copy_((-mask_scale * cut * mean / mean.dot(mean)).float())
    return {"class_scale": scale, "no_object_logit": no_object, "mask_scale": mask_scale, "mask_cut": cut}


def describe(model: MaskFormerForInstanceSegmentation, images: Sequence[npt.NDArray[np.uint8]]) -> dict[str, float]:
    """How trained-like ``model`` answers on ``images``: queries above 0.5, their mean score, and
    the share of mask pixels whose logit is within 1 of the threshold (the undecided edges)."""
    with torch.inference_mode():
        out = model(pixel_values=pixel_values(images))
    probabilities = out.class_queries_logits.softmax(-1)[..., :-1]
    scores, _ = probabilities.max(-1)
    confident = scores > 0.5
    masks = out.masks_queries_logits[confident]
    return {
        "queries_above_0.5": float(confident.sum(-1).float().mean()),
        "mean_kept_score": float(scores[confident].mean()) if confident.any() else 0.0,
        "undecided_mask_pixels": float((masks.abs() < 1.0).float().mean()) if len(masks) else 1.0,
    }
