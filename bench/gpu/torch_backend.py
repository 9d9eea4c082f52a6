"""PyTorch eager as a maskserve ``Backend``: the transformers model on a device, with or without
autocast, followed by the same fused head the bundle's graph holds, so that its answers go
through ``Segmenter`` like the bundles' and can be compared with them pixel for pixel."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from transformers import MaskFormerForInstanceSegmentation

from maskserve.model.wrapper import ServingMaskFormer


def autocast(device: str, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """FP16 autocast, on CUDA and on the CPU alike (the rehearsal takes the same path; bfloat16,
    CPU autocast's default, has 8 bits of mantissa and answered differently on 9% of pixels)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.float16)


def load_model(checkpoint: str, device: str) -> MaskFormerForInstanceSegmentation:
    model: MaskFormerForInstanceSegmentation = MaskFormerForInstanceSegmentation.from_pretrained(checkpoint)
    model.eval()
    torch.nn.Module.to(model, device)
    if device == "cpu":
        # The rehearsal: on two shared cores PyTorch's OpenMP threads wait on each other behind
        # other processes (a 64x64 demo forward took 0.26-1.1 s on two threads, 0.04 s on one).
        torch.set_num_threads(1)
    return model


class TorchBackend:
    """``run`` like ``OnnxRuntimeBackend.run``; the body under autocast when ``half``, the head in
    float32 as in the exported graph (it takes argmaxes and compares against thresholds)."""

    name = "torch"

    def __init__(self, model: MaskFormerForInstanceSegmentation, device: str, half: bool, max_batch: int) -> None:
        self.serving = ServingMaskFormer(model)
        self.device, self.half, self.max_batch = device, half, max_batch
        self.provider = f"{device}{' autocast' if half else ''}"

    def run(
        self, feeds: Mapping[str, npt.NDArray[np.generic]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[np.generic]]:
        device = self.device
        pixels = torch.from_numpy(np.asarray(feeds["pixel_values"])).to(device)
        serving = self.serving
        with torch.inference_mode():
            with autocast(device, self.half):
                body = serving.body(pixels, return_dict=True)
                queries = body.transformer_decoder_last_hidden_state
                class_logits = serving.class_predictor(queries)
                mask_embeddings = serving.mask_embedder(queries)
            result = serving.head(
                class_logits=class_logits.float(),
                mask_embeddings=mask_embeddings.float(),
                pixel_embeddings=body.pixel_decoder_last_hidden_state.float(),
                image_sizes=torch.from_numpy(np.asarray(feeds["image_sizes"])).to(device),
                score_threshold=torch.from_numpy(np.asarray(feeds["score_threshold"])).to(device),
                mask_threshold=torch.from_numpy(np.asarray(feeds["mask_threshold"])).to(device),
                panoptic_upsampling=torch.from_numpy(np.asarray(feeds["panoptic_upsampling"])).to(device),
                canvas_hw=(pixels.shape[-2], pixels.shape[-1]),
            )
        return {name: result[name].cpu().numpy() for name in outputs}

    def close(self) -> None:
        pass
