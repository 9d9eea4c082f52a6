"""Mask heads that draw regions: each query's mask covers the pixels that look like what the
query reads, as a trained MaskFormer's masks do.

``bench.trained_like`` makes a random MaskFormer's scores decisive and its masks smooth, but the
masks it draws are random directions of the pixel features: on generated scenes the kept queries'
masks are near-duplicate half-images (pairwise IoU 0.8-1.0), so the panoptic merge keeps 2-4
segments where a trained model keeps 10-30, and every host cost that grows with segments and
boundaries is hidden. ``fit_region_masks`` re-sets the mask head's last layer after it, keeping
its scores:

- what a query reads: the last decoder layer's cross-attention over the backbone's 1/32 grid
  (recomputed from the layer's own projections), averaged over heads;
- its target direction: the pixel decoder's feature at those places, in whitened coordinates of
  the features' leading principal components (taken orthogonal to the mean feature, so the mask
  head needs no per-query constant);
- a ridge regression from the mask head's input (the query state) to that direction, so that on
  any image the mask of query q is ``s * (u_q . z(x) - t)``: a half-space of feature space pointing
  at what q reads, which on an image is the region that looks like it (coherent, and different
  for queries that read different places);
- ``t`` so that a kept query's mask covers ``coverage`` of the image on average, ``s`` so that the
  median mask logit is 6 in magnitude (decided everywhere but at the edges).

Deterministic (float64 on the CPU, no random draws). Calibrate on images of the canvas served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from transformers import MaskFormerForInstanceSegmentation

from bench.trained_like import pixel_values

COMPONENTS = 12  # leading principal components of the pixel features the masks live in
RIDGE = 1e-2  # of the query states' mean squared norm: the regression has C' unknowns and B*Q samples


def _last_linear(module: torch.nn.Module) -> torch.nn.Linear:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]


def _reads(model: MaskFormerForInstanceSegmentation, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward pass: ``states`` (B, Q, C') the mask head's last-layer inputs, ``scores``
    (B, Q) the best label's probability, ``attention`` (B, Q, h, w) the last decoder layer's
    cross-attention on the 1/32 grid, ``features`` (B, C, H/4, W/4) the pixel decoder's output."""
    attention = model.model.transformer_module.decoder.layers[-1].encoder_attn
    captured: dict[str, Any] = {}

    def keep_inputs(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.update(kwargs)
        names = ("hidden_states", "key_value_states")
        captured.update({name: value for name, value in zip(names, args, strict=False)})

    last = _last_linear(model.mask_embedder)
    hooks = [
        attention.register_forward_pre_hook(keep_inputs, with_kwargs=True),
        last.register_forward_hook(lambda _m, args, _out: captured.__setitem__("states", args[0].detach())),
    ]
    try:
        with torch.inference_mode():
            out = model(pixel_values=pixels)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.inference_mode():
        weights = _attention_weights(attention, captured)  # (B, Q, S)
    grid = out.encoder_last_hidden_state.shape[-2:]
    return {
        "states": captured["states"].double(),
        "scores": out.class_queries_logits.softmax(-1)[..., :-1].max(-1).values.double(),
        "attention": weights.reshape(*weights.shape[:2], *grid).double(),
        "features": out.pixel_decoder_last_hidden_state.double(),
    }


def _attention_weights(module: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """The cross-attention probabilities, head-averaged, from the layer's inputs (as
    ``MaskFormerDetrCrossAttention.forward`` computes them; its eager path returns None)."""
    hidden, memory = inputs["hidden_states"], inputs["key_value_states"]
    queries = hidden + inputs["position_embeddings"] if inputs.get("position_embeddings") is not None else hidden
    position = inputs.get("encoder_position_embeddings")
    keys = memory + position if position is not None else memory
    q = module.q_proj(queries).unflatten(-1, (-1, module.head_dim)).transpose(1, 2)  # (B, heads, Q, d)
    k = module.k_proj(keys).unflatten(-1, (-1, module.head_dim)).transpose(1, 2)  # (B, heads, S, d)
    result: torch.Tensor = (q @ k.transpose(-1, -2) * module.scaling).softmax(-1).mean(1)
    return result


def _whitening(features: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` (k, C) mapping a feature to whitened coordinates of its leading principal components
    taken orthogonal to the mean feature (so ``A @ mean == 0``), and the mean (C,)."""
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    mean = flat.mean(0)
    unit = mean / mean.norm()
    centered = flat - mean
    centered = centered - (centered @ unit)[:, None] * unit
    _, singular, vectors = torch.linalg.svd(centered, full_matrices=False)
    k = min(components, int((singular > singular[0] * 1e-6).sum()))
    basis = vectors[:k] - (vectors[:k] @ unit)[:, None] * unit  # exactly orthogonal to the mean
    return basis * (len(flat) ** 0.5 / singular[:k, None]), mean


def fit_region_masks(
    model: MaskFormerForInstanceSegmentation,
    calibration: Sequence[npt.NDArray[np.uint8]],
    coverage: float = 0.06,
    components: int = COMPONENTS,
) -> dict[str, float]:
    """Set ``model``'s last mask-head layer in place (see the module docstring), calibrated on
    ``calibration`` images of one canvas. Call after ``bench.trained_like.make_trained_like``
    (whose kept queries it calibrates on). Returns the fitted values."""
    reads = _reads(model, pixel_values(calibration))
    states, scores, attention, features = reads["states"], reads["scores"], reads["attention"], reads["features"]
    whiten, _ = _whitening(features, components)  # (k, C)
    # What each query reads: the pixel features pooled onto the attention's grid, weighted by it.
    grid = (int(attention.shape[-2]), int(attention.shape[-1]))
    pooled = torch.nn.functional.adaptive_avg_pool2d(features, grid)  # (B, C, h, w)
    read = torch.einsum("bqhw,bchw->bqc", attention, pooled)  # (B, Q, C)
    target = read @ whiten.T  # (B, Q, k)
    target = target / target.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    # Ridge regression target ~ G h + g0, weighting kept queries (the ones whose masks are seen).
    weight = (0.1 + (scores > 0.5).double()).reshape(-1, 1)
    inputs = torch.cat([states.reshape(-1, states.shape[-1]), torch.ones(weight.shape, dtype=states.dtype)], 1)
    gram = inputs.T @ (weight * inputs)
    ridge = RIDGE * float(gram.diagonal()[:-1].mean()) * torch.eye(len(gram), dtype=gram.dtype)
    ridge[-1, -1] = 0.0
    solution = torch.linalg.solve(gram + ridge, inputs.T @ (weight * target.reshape(-1, target.shape[-1])))
    gain, offset = solution[:-1].T, solution[-1]  # (k, C'), (k,)
    fitted = inputs @ solution
    explained = 1 - float(((fitted - target.reshape(fitted.shape)) ** 2).sum() / (target**2).sum())

    # Mask logits before scale and threshold: u_q . z(x), for the kept queries' masks.
    directions = states @ gain.T + offset  # (B, Q, k)
    flat = features.permute(0, 2, 3, 1)  # (B, H/4, W/4, C)
    along = torch.einsum("bqk,kc,bhwc->bqhw", directions, whiten, flat)
    kept = along[scores > 0.5].reshape(-1)
    cut = float(
        torch.quantile(
            kept[torch.randperm(len(kept), generator=torch.Generator().manual_seed(0))[: 1 << 20]], 1 - coverage
        )
    )
    scale = 6.0 / float((kept - cut).abs().median())
    mean = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).mean(0)
    last = _last_linear(model.mask_embedder)
    with torch.no_grad():
        last.weight.copy_((scale * whiten.T @ gain).float())
        # The threshold through the mean feature: p(x) . mean / |mean|^2 is about 1 everywhere.
        last.bias.copy_((scale * (whiten.T @ offset - cut * mean / mean.dot(mean))).float())
    return {"region_explained": explained, "region_cut": cut, "region_scale": scale}
