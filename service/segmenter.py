"""``Segmenter``: the request path (prepare, forward, post-process) for one bundle, in-process.

The server's batcher calls the same three stages (prepare and post-process in its worker pool,
forward once per batch), and so do engine verification, the demo evaluation and the benchmarks:
one resampling rule, one set of feeds, one post-processing everywhere. As in roboflow's
``pre_process -> forward -> post_process``, but the runtime classes only run graphs
(``Backend.run``); everything around them is here, once.

    from maskserve import Segmenter
    seg = Segmenter.load()                       # the embedded demo bundle, ONNX Runtime
    result = seg.segment("photo.jpg", task="panoptic", threshold=0.6)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from maskserve.bundle import DEFAULT_BUNDLE, SERVED_OUTPUTS, TASK_OUTPUTS, Bundle, Canvas, Manifest, Task
from maskserve.service.backends import Backend, BackendOptions
from maskserve.service.backends.base import graph_feeds
from maskserve.service.decode import DEFAULT_MAX_IMAGE_PIXELS
from maskserve.service.errors import InvalidRequest
from maskserve.service.loading import check_runtime, load_backend
from maskserve.service.postprocess import PanopticRule, PostProcessor, TaskParams
from maskserve.service.precision import Fallback, cpu_flags, served_precision
from maskserve.service.preprocess import ImageInput, Normalizer, Prepared, prepare
from maskserve.service.result import Result

Outputs = dict[str, npt.NDArray[Any]]


def serving_canvases(manifest: Manifest, requested: Iterable[Canvas | str] | None = None) -> list[tuple[int, int]]:
    """The canvases to letterbox into, as (h, w): the requested ones (``Canvas`` or ``"HxW"``),
    else the bundle's."""
    if requested is None:
        return [canvas.hw for canvas in manifest.canvases]
    chosen = [(c if isinstance(c, Canvas) else Canvas.parse(c)).hw for c in requested]
    if not chosen:
        raise ValueError("canvases must not be empty")
    return list(dict.fromkeys(chosen))


class Segmenter:
    """Segment images with one bundle on one backend. Thread-safe: ``segment`` may be called
    from several threads (the backend serializes what it must)."""

    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        *,
        canvases: Iterable[Canvas | str] | None = None,
        panoptic_rule: PanopticRule | str = PanopticRule.MASKFORMER,
        max_batch: int | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        manifest = bundle.manifest
        self.bundle = bundle
        self.manifest = manifest
        self.backend = backend
        self.canvases = serving_canvases(manifest, canvases)
        # An engine profile may accept less than the bundle.
        self.max_batch = min(max_batch or manifest.max_batch, manifest.max_batch, backend.max_batch)
        self.max_image_pixels = max_image_pixels
        self.normalizer = Normalizer(manifest.normalization)
        self.postprocessor = PostProcessor(manifest.label_names, manifest.isthing, PanopticRule(panoptic_rule))

    @classmethod
    def load(
        cls,
        bundle: str | Path | Bundle | None = None,
        *,
        backend: str = "auto",
        provider: str = "auto",
        canvases: Iterable[Canvas | str] | None = None,
        panoptic_rule: PanopticRule | str = PanopticRule.MASKFORMER,
        max_batch: int | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        intra_op_threads: int = 0,
        openvino_hint: str = "latency",
        engine_cache: str | Path | None = None,
        engine_precision: str = "fp16",
        cuda_graphs: bool = False,
        precision_fallback: Fallback = "refuse",
    ) -> Segmenter:
        """Load a bundle directory (default: the embedded demo model) and create its backend.

        ``backend`` and ``provider`` are the ``MASKSERVE_BACKEND`` / ``MASKSERVE_PROVIDER``
        choices (e.g. ``backend="openvino"``, ``provider="cuda"``), ``precision_fallback``
        ``MASKSERVE_PRECISION_FALLBACK``'s (a bf16 bundle where bf16 cannot run). Raises
        ``BundleError`` or ``BackendError`` (one line).
        """
        loaded = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle or DEFAULT_BUNDLE)
        options = BackendOptions(
            backend=backend,
            provider=provider,
            intra_op_threads=intra_op_threads,
            openvino_hint=openvino_hint,
            engine_cache=Path(engine_cache) if engine_cache is not None else None,
            engine_precision=engine_precision,
            cuda_graphs=cuda_graphs,
        )
        chosen = serving_canvases(loaded.manifest, canvases)
        kind = check_runtime(options, loaded)
        served = served_precision(loaded.manifest.precision, kind, cpu_flags(), precision_fallback)
        runtime = load_backend(options, loaded, chosen, max_batch or loaded.manifest.max_batch, served)
        return cls(
            loaded,
            runtime,
            canvases=[f"{h}x{w}" for h, w in chosen],
            panoptic_rule=panoptic_rule,
            max_batch=max_batch,
            max_image_pixels=max_image_pixels,
        )

    # --- the one-call API -------------------------------------------------------------------

    def segment(
        self,
        image: ImageInput,
        task: Task | None = None,
        *,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_threshold: float | None = None,
        label_ids: Iterable[int] | None = None,
        min_area: int = 0,
    ) -> Result:
        """Segment one image: a path, encoded bytes, a PIL image or ``(H, W, 3)`` uint8 RGB."""
        params = self.params(task, threshold, mask_threshold, overlap_threshold, label_ids, min_area)
        prepared = self.prepare(image)
        (outputs,), seconds = self._timed_forward([prepared], [params])
        return self.postprocess(outputs, prepared, params, inference_s=seconds)

    def segment_batch(
        self,
        images: Sequence[ImageInput],
        task: Task | None = None,
        *,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_threshold: float | None = None,
        label_ids: Iterable[int] | None = None,
        min_area: int = 0,
    ) -> list[Result]:
        """Segment several images with one set of parameters; one model call per batch of up to
        ``max_batch`` images that share a canvas. Results come back in input order."""
        params = self.params(task, threshold, mask_threshold, overlap_threshold, label_ids, min_area)
        prepared = [self.prepare(image) for image in images]
        by_canvas: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(prepared):
            by_canvas.setdefault(item.canvas, []).append(index)
        results: list[Result | None] = [None] * len(prepared)
        for indices in by_canvas.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                outputs, seconds = self._timed_forward([prepared[i] for i in chunk], [params] * len(chunk))
                for i, image_outputs in zip(chunk, outputs, strict=True):
                    results[i] = self.postprocess(image_outputs, prepared[i], params, inference_s=seconds)
        return [result for result in results if result is not None]

    # --- the three stages ---------------------------------------------------------------------

    def params(
        self,
        task: str | None = None,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_threshold: float | None = None,
        label_ids: Iterable[int] | None = None,
        min_area: int = 0,
    ) -> TaskParams:
        """A request's task and thresholds, with the bundle's defaults; ``InvalidRequest`` (a
        422 over HTTP) for a task the bundle does not serve, a value outside [0, 1], or an
        unknown label id."""
        manifest = self.manifest
        defaults = manifest.thresholds
        chosen = task or manifest.default_task
        if chosen not in manifest.tasks:
            raise InvalidRequest(f"task {chosen!r} is not served by this bundle (tasks: {', '.join(manifest.tasks)})")
        values = {"threshold": threshold, "mask_threshold": mask_threshold, "overlap_threshold": overlap_threshold}
        for name, value in values.items():
            if value is not None and not 0.0 <= value <= 1.0:
                raise InvalidRequest(f"{name} {value} is outside [0, 1]")
        if min_area < 0:
            raise InvalidRequest(f"min_area {min_area} is negative")
        wanted = frozenset(label_ids) if label_ids is not None else None
        if wanted is not None:
            unknown = sorted(i for i in wanted if not 0 <= i < manifest.num_labels)
            if unknown:
                raise InvalidRequest(f"label_ids {unknown} are not labels of this model (0..{manifest.num_labels - 1})")
        return TaskParams(
            task=chosen,  # type: ignore[arg-type]  # checked against manifest.tasks above
            score_threshold=defaults.score if threshold is None else threshold,
            mask_threshold=defaults.mask if mask_threshold is None else mask_threshold,
            overlap_threshold=defaults.overlap if overlap_threshold is None else overlap_threshold,
            label_ids=wanted,
            min_area=min_area,
        )

    def prepare(self, image: ImageInput, max_pixels: int | None = None) -> Prepared:
        """Decode and letterbox into the canvas that wastes the fewest pixels."""
        return prepare(image, max_pixels or self.max_image_pixels, self.canvases, self.normalizer)

    def forward(self, prepared: Sequence[Prepared], params: Sequence[TaskParams]) -> list[Outputs]:
        """One model call for images that share a canvas. Returns, per image, the graph outputs
        its task needs with the batch dimension removed."""
        canvases = {item.canvas for item in prepared}
        if len(canvases) != 1 or not 0 < len(prepared) <= self.max_batch or len(params) != len(prepared):
            raise ValueError(
                f"a forward batch needs 1..{self.max_batch} images of one canvas and one params each, got "
                f"{len(prepared)} images of canvases {sorted(canvases)} and {len(params)} params"
            )
        feeds = graph_feeds(
            np.stack([item.pixels for item in prepared]),
            [item.letterbox.valid for item in prepared],
            [p.score_threshold for p in params],
            [p.mask_threshold for p in params],
            self.postprocessor.rule.upsampling,
        )
        names = sorted({name for p in params for name in TASK_OUTPUTS[p.task]})
        results = self.backend.run(feeds, names)
        wrong = [name for name in names if results[name].shape[0] != len(prepared)]
        if wrong:
            raise RuntimeError(f"the backend returned the wrong batch size for {wrong}")
        return [{name: results[name][index] for name in TASK_OUTPUTS[p.task]} for index, p in enumerate(params)]

    def postprocess(
        self, outputs: Outputs, prepared: Prepared, params: TaskParams, inference_s: float | None = None
    ) -> Result:
        """Segments in original image coordinates, with COCO RLE masks."""
        started = time.perf_counter()
        segments = self.postprocessor(outputs, prepared.letterbox, params)
        timing = {"decode": prepared.decode_s, "preprocess": prepared.preprocess_s}
        if inference_s is not None:
            timing["inference"] = inference_s
        timing["postprocess"] = time.perf_counter() - started
        height, width = prepared.letterbox.original
        return Result(task=params.task, height=height, width=width, segments=tuple(segments), timing=timing)

    # --- lifecycle ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Run every (batch size, canvas) shape once, so that no request pays for first-run setup
        (allocation, kernel selection)."""
        for height, width in self.canvases:
            for batch in range(1, self.max_batch + 1):
                pixels = np.zeros((batch, 3, height, width), dtype=np.float32)
                feeds = graph_feeds(pixels, [(height, width)] * batch, 0.5, 0.5, self.postprocessor.rule.upsampling)
                self.backend.run(feeds, SERVED_OUTPUTS)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _timed_forward(self, prepared: Sequence[Prepared], params: Sequence[TaskParams]) -> tuple[list[Outputs], float]:
        started = time.perf_counter()
        outputs = self.forward(prepared, params)
        return outputs, time.perf_counter() - started
