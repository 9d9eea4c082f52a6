"""maskserve: serve MaskFormer segmentation models over HTTP, or in-process with ``Segmenter``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Result", "Segment", "Segmenter", "__version__"]

if TYPE_CHECKING:
    from maskserve.service.result import Result, Segment
    from maskserve.service.segmenter import Segmenter


def __getattr__(name: str) -> Any:
    # Lazy, so that `import maskserve` (the CLI, `--version`) does not load NumPy or ONNX Runtime.
    if name == "Segmenter":
        from maskserve.service.segmenter import Segmenter

        return Segmenter
    if name in ("Result", "Segment"):
        from maskserve.service import result

        return getattr(result, name)
    raise AttributeError(f"module 'maskserve' has no attribute {name!r}")
