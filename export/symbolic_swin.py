"""An export-time patch that makes transformers' MaskFormer Swin shape-generic.

``torch.onnx.export(dynamo=True)`` traces with symbolic H and W, but a Python ``if`` on a
symbolic size is decided once, at the trace canvas, and the branch not taken is missing from
the graph (torch.onnx defers the guard to a runtime assert that ONNX drops, so the file still
claims dynamic H and W). MaskFormer's Swin (``modeling_maskformer_swin.py``, transformers 5.24.0)
has three such branches; everything else in the backbone, the pixel decoder (the FPN resizes
with ``interpolate(size=left.shape[-2:])``) and the transformer decoder is symbolic:

* ``MaskFormerSwinLayer.forward`` pads each stage to a multiple of the window and crops back
  only ``if was_padded`` (``pad_values[3] > 0 or pad_values[5] > 0``). Traced where a stage pads
  in neither axis (window 7: 224 x 224, 448 x 448; window 12: 384 x 384, 768 x 768; window 4:
  128 x 128), the crop is missing and every canvas where that stage pads fails in ONNX Runtime.
  The original Swin has the same branch:
  https://github.com/facebookresearch/MaskFormer/blob/da3e60d85fdeedcb31476b5edd7d328826ce56cc/mask_former/modeling/backbone/swin.py#L286-L287
* ``MaskFormerSwinPatchEmbeddings.maybe_pad`` pads the image to a multiple of the patch size
  only ``if width % patch != 0`` (and height);
* ``MaskFormerSwinPatchMerging.maybe_pad`` pads to even sizes only ``if height % 2 == 1 or
  width % 2 == 1``. With patch 4 and canvases that are multiples of 32 the last two are decided
  the same way at every canvas, but they are patched too so that no canvas rule depends on it.

The shifted-window attention mask (``get_attn_mask``) is built from ``arange`` comparisons on
the padded size (the loop-over-slices version of transformers 4.x exports symbolically too).

``symbolic_swin()`` swaps those three methods on the classes for the duration of an export and
restores them on exit, error included. The replacements compute what the originals compute
(the tests hold them to stock transformers at many sizes), so another thread running a Swin
eagerly meanwhile gets the same answers. ``patch_problem()`` checks, before anything is swapped,
that the installed transformers still has the code the patch was written for.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from transformers.models.maskformer import modeling_maskformer_swin as swin

# What the patch relies on in each method it replaces or whose behaviour it changes, as source
# lines (whitespace-stripped). A transformers release that changes them disables the patch.
_EXPECTED: dict[tuple[type[nn.Module], str], tuple[str, ...]] = {
    (swin.MaskFormerSwinLayer, "forward"): (
        "hidden_states, pad_values = self.maybe_pad(hidden_states, height, width)",
        "was_padded = pad_values[3] > 0 or pad_values[5] > 0",
        "if was_padded:",
        "attention_windows = attention_windows[:, :height, :width, :].contiguous()",
    ),
    (swin.MaskFormerSwinLayer, "maybe_pad"): (
        "pad_values = (0, 0, pad_left, pad_right, pad_top, pad_bottom)",
        "return hidden_states, pad_values",
    ),
    (swin.MaskFormerSwinPatchEmbeddings, "maybe_pad"): ("if width % self.patch_size[1] != 0:",),
    (swin.MaskFormerSwinPatchMerging, "maybe_pad"): ("if (height % 2 == 1) or (width % 2 == 1):",),
}

# `forward` reads the pad values only for its `was_padded` test (checked by patch_problem): values
# that say "padded" in both axes make it always crop back to (height, width), which is a no-op
# slice where nothing was padded. The padding itself is the stock, already symbolic, amount.
_CROP_ALWAYS = (0, 0, 0, 1, 0, 1)

_lock = threading.RLock()
_depth = 0  # nesting of symbolic_swin() in the thread that holds _lock


def _layer_maybe_pad(
    self: swin.MaskFormerSwinLayer, hidden_states: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(B, H, W, C)`` -> ``(B, Hp, Wp, C)`` padded at the bottom and right to multiples of the window."""
    pad_right = (self.window_size - width % self.window_size) % self.window_size
    pad_bottom = (self.window_size - height % self.window_size) % self.window_size
    return nn.functional.pad(hidden_states, (0, 0, 0, pad_right, 0, pad_bottom)), _CROP_ALWAYS


def _embeddings_maybe_pad(
    self: swin.MaskFormerSwinPatchEmbeddings, pixel_values: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """``(B, 3, H, W)`` padded at the bottom and right to multiples of the patch size (by 0 or more)."""
    patch_h, patch_w = self.patch_size
    pad_w = (patch_w - width % patch_w) % patch_w
    pad_h = (patch_h - height % patch_h) % patch_h
    return nn.functional.pad(pixel_values, (0, pad_w, 0, pad_h))


def _merging_maybe_pad(
    self: swin.MaskFormerSwinPatchMerging, input_feature: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """``(B, H, W, C)`` padded at the bottom and right to even sizes (by 0 or 1)."""
    return nn.functional.pad(input_feature, (0, 0, 0, width % 2, 0, height % 2))


_SWAPS: tuple[tuple[type[nn.Module], str, Callable[..., Any]], ...] = (
    (swin.MaskFormerSwinLayer, "maybe_pad", _layer_maybe_pad),
    (swin.MaskFormerSwinPatchEmbeddings, "maybe_pad", _embeddings_maybe_pad),
    (swin.MaskFormerSwinPatchMerging, "maybe_pad", _merging_maybe_pad),
)


def _source_lines(function: Callable[..., Any]) -> list[str]:
    return [line.strip() for line in inspect.getsource(function).splitlines()]


def patch_problem() -> str | None:
    """None when the installed transformers has the code ``symbolic_swin`` patches, else why not."""
    for (cls, name), expected in _EXPECTED.items():
        function = cls.__dict__.get(name)
        if function is None:
            return f"{cls.__name__}.{name} no longer exists"
        try:
            lines = _source_lines(function)
        except (OSError, TypeError):
            return f"the source of {cls.__name__}.{name} cannot be read"
        missing = [line for line in expected if line not in lines]
        if missing:
            return f"{cls.__name__}.{name} changed (no line `{missing[0]}`)"
    forward = "\n".join(_source_lines(swin.MaskFormerSwinLayer.forward))
    if forward.count("pad_values") != 3:  # the assignment and the two reads of `was_padded`
        return "MaskFormerSwinLayer.forward uses its pad values for more than the crop test"
    return None


class SwinPatchUnavailable(RuntimeError):
    """The installed transformers does not have the code the patch was written for."""


@contextlib.contextmanager
def symbolic_swin() -> Iterator[None]:
    """Swap the shape-branching Swin methods for symbolic ones until the block exits.

    Raises ``SwinPatchUnavailable`` (before swapping anything) when ``patch_problem`` finds one.
    The swap is process-wide while active: other threads wait for it to end, and a nested use
    in the same thread keeps it.
    """
    global _depth
    with _lock:
        saved: list[tuple[type[nn.Module], str, Any]] = []
        if _depth == 0:
            problem = patch_problem()
            if problem is not None:
                raise SwinPatchUnavailable(problem)
            saved = [(cls, name, cls.__dict__[name]) for cls, name, _ in _SWAPS]
            for cls, name, replacement in _SWAPS:
                setattr(cls, name, replacement)
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0:
                for cls, name, original in saved:
                    setattr(cls, name, original)
