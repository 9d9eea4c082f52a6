"""The runtime interface every backend implements (ONNX Runtime, native TensorRT)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from maskserve.bundle import PanopticUpsampling


def graph_feeds(
    pixel_values: npt.ArrayLike,
    image_sizes: npt.ArrayLike,
    score_threshold: float | npt.ArrayLike,
    mask_threshold: float | npt.ArrayLike,
    panoptic_upsampling: int | npt.ArrayLike = PanopticUpsampling.LOGITS,
) -> dict[str, npt.NDArray[Any]]:
    """The graph inputs (``maskserve.bundle.INPUTS``) for a batch, in the dtypes the graph takes.

    Args:
        pixel_values: ``(B, 3, H, W)`` normalized canvases.
        image_sizes: ``(B, 2)`` valid (h, w) of each image inside the canvas, in pixels.
        score_threshold, mask_threshold: one value for the batch, or ``(B,)``.
        panoptic_upsampling: ``PanopticUpsampling``, one for the batch or ``(B,)``; the panoptic
            rule decides it (``PanopticRule.upsampling``).
    """
    pixels = np.ascontiguousarray(pixel_values, dtype=np.float32)
    batch = pixels.shape[0]
    return {
        "pixel_values": pixels,
        "image_sizes": np.asarray(image_sizes, dtype=np.int64).reshape(batch, 2),
        "score_threshold": np.broadcast_to(np.asarray(score_threshold, dtype=np.float32), (batch,)).copy(),
        "mask_threshold": np.broadcast_to(np.asarray(mask_threshold, dtype=np.float32), (batch,)).copy(),
        "panoptic_upsampling": np.broadcast_to(np.asarray(panoptic_upsampling, dtype=np.int32), (batch,)).copy(),
    }


class BackendError(Exception):
    """A backend cannot be created on this machine (missing provider, GPU, engine)."""


class Backend(Protocol):
    """Runs the bundle's graph on one batch.

    ``run`` takes the graph inputs of ``maskserve.bundle.INPUTS`` for a batch ``(B, ...)`` and
    returns the requested outputs, as host arrays with the batch dimension first. It may be
    called from any thread, concurrently: each implementation makes that safe (ONNX Runtime
    sessions are thread-safe; the TensorRT backend serializes on a lock).
    """

    name: str
    provider: str
    max_batch: int

    def run(
        self, feeds: Mapping[str, npt.NDArray[np.generic]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[np.generic]]: ...

    def close(self) -> None: ...
