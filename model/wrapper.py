"""Inference-only wrapper that turns transformers' MaskFormer into the exported graph."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import MaskFormerForInstanceSegmentation

from maskserve.model.fused_head import FusedMaskHead


class ServingMaskFormer(nn.Module):
    """``pixel_values`` + per-image thresholds in, compact per-task tensors out.

    Works for every backbone transformers' MaskFormer supports (Swin and ResNet): it reuses
    the checkpoint's own backbone, pixel decoder, transformer decoder, class predictor and
    mask embedder, and replaces only what comes after them with ``FusedMaskHead``.
    """

    def __init__(self, hf_model: MaskFormerForInstanceSegmentation, body_dtype: torch.dtype = torch.float32) -> None:
        """``body_dtype`` float16 runs everything up to the mask embeddings in half precision
        (pass a copy: the modules are converted in place); the fused head always computes
        in float32, since it takes argmaxes and compares against thresholds."""
        super().__init__()
        self.body_dtype = body_dtype
        self.body = hf_model.model.to(body_dtype)
        self.class_predictor = hf_model.class_predictor.to(body_dtype)
        self.mask_embedder = hf_model.mask_embedder.to(body_dtype)
        self.head = FusedMaskHead()
        self.eval()

    def forward(
        self,
        pixel_values: Tensor,
        image_sizes: Tensor,
        score_threshold: Tensor,
        mask_threshold: Tensor,
        panoptic_upsampling: Tensor,
    ) -> dict[str, Tensor]:
        """Run the body and the fused head.

        Args:
            pixel_values: ``(B, 3, H, W)`` float32, normalized; H and W multiples of 32.
            image_sizes: ``(B, 2)`` int64, the valid (letterboxed) height and width of each image.
            score_threshold: ``(B,)`` float32, the panoptic query score threshold.
            mask_threshold: ``(B,)`` float32, the mask probability threshold.
            panoptic_upsampling: ``(B,)`` int32, ``maskserve.bundle.PanopticUpsampling``: the panoptic
                head's order of bilinear upsampling and sigmoid.

        Returns:
            The outputs listed in ``maskserve.bundle.OUTPUTS``.
        """
        outputs = self.body(pixel_values.to(self.body_dtype), return_dict=True)
        queries = outputs.transformer_decoder_last_hidden_state  # (B, Q, C)
        pixel_embeddings = outputs.pixel_decoder_last_hidden_state  # (B, C, H/4, W/4)
        result: dict[str, Tensor] = self.head(
            class_logits=self.class_predictor(queries).float(),
            mask_embeddings=self.mask_embedder(queries).float(),
            pixel_embeddings=pixel_embeddings.float(),
            image_sizes=image_sizes,
            score_threshold=score_threshold,
            mask_threshold=mask_threshold,
            panoptic_upsampling=panoptic_upsampling,
            canvas_hw=(pixel_values.shape[-2], pixel_values.shape[-1]),
        )
        return result


@torch.inference_mode()
def raw_logits(hf_model: MaskFormerForInstanceSegmentation, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
    """transformers' own forward: ``class_queries_logits (B, Q, K+1)``, ``masks_queries_logits
    (B, Q, H/4, W/4)``. The independent reference that the exported graph is checked against."""
    out = hf_model(pixel_values=pixel_values)
    return out.class_queries_logits, out.masks_queries_logits
