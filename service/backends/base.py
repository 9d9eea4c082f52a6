"""The runtime interface every backend implements (ONNX Runtime, native TensorRT)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt


class BackendError(Exception):
    """A backend cannot be created on this machine (missing provider, GPU, engine)."""


class Backend(Protocol):
    """Runs the bundle's graph on one batch. Called from one thread at a time.

    ``run`` takes the graph inputs of ``maskserve.bundle.INPUTS`` for a batch ``(B, ...)`` and
    returns the requested outputs, as host arrays with the batch dimension first.
    """

    name: str
    provider: str
    max_batch: int

    def run(
        self, feeds: Mapping[str, npt.NDArray[np.generic]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[np.generic]]: ...

    def close(self) -> None: ...
