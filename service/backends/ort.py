"""ONNX Runtime backend: TensorRT EP, CUDA EP or CPU, chosen by availability unless pinned.

On the CPU provider the graph runs in stages: the body (backbone to raw logits) once per batch,
then only the heads of the tasks the batch asked for. ONNX Runtime computes every node of a
session whatever outputs are fetched, and the three heads together cost about half as much as
the body on a CPU (upsampling 100-150 maps to full resolution); on a GPU they are cheap and one
fused graph is kept, so nothing leaves the device between stages. With ``host_head`` (the
default), the semantic and the panoptic heads run on the host instead
(``maskserve.service.boundary_head``, ``boundary_panoptic``), from the graph's own
1/4-resolution Softmax, Sigmoid and Einsum and the raw mask logits, upsampling only where a
decision can change; their outputs equal the head sessions' in both panoptic upsampling orders.

The module is named ``ort`` so that it never shadows the ``onnxruntime`` package it wraps.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from maskserve.bundle import INPUTS, RAW_OUTPUTS, TASK_OUTPUTS, PanopticUpsampling, Task
from maskserve.errors import first_line
from maskserve.service import bilinear, boundary_head, boundary_panoptic, cell_kernels, logistic
from maskserve.service.backends.base import BackendError

if TYPE_CHECKING:
    import onnx.utils

log = logging.getLogger("maskserve")

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("tensorrt", "cuda", "cpu")


def provider_chain(choice: str, available: Sequence[str], tensorrt_present: bool | None = None) -> list[str]:
    """Providers to hand to the session, best first. A pinned provider must be available.

    ``auto`` takes the TensorRT EP only where TensorRT itself is installed (``tensorrt_present``,
    default: the ``tensorrt`` package is importable): onnxruntime-gpu lists the TensorRT EP as
    available whether or not TensorRT's libraries exist, and a session asked for it without them
    fails and is re-created by ONNX Runtime on its fallback list, without maskserve's provider
    options (seen with onnxruntime-gpu 1.31.1 on a machine without TensorRT).
    """
    if choice != "auto":
        if choice not in PROVIDERS:
            raise BackendError(f"unknown provider {choice!r}; choices: auto, {', '.join(PROVIDERS)}")
        name = PROVIDERS[choice]
        if name not in available:
            raise BackendError(
                f"provider '{choice}' ({name}) is not available in this onnxruntime build; available: "
                f"{', '.join(available)}"
            )
        chain = [name]
    else:
        if tensorrt_present is None:
            tensorrt_present = importlib.util.find_spec("tensorrt") is not None
        chain = [
            PROVIDERS[key]
            for key in AUTO_ORDER
            if PROVIDERS[key] in available and (key != "tensorrt" or tensorrt_present)
        ]
    if PROVIDERS["cpu"] not in chain:
        chain.append(PROVIDERS["cpu"])  # ORT's fallback for any node the accelerator lacks
    return chain


def _provider_options(name: str, engine_cache: Path | None, fp16: bool) -> dict[str, Any]:
    if name == PROVIDERS["tensorrt"]:
        options: dict[str, Any] = {"trt_fp16_enable": fp16, "trt_max_workspace_size": 4 << 30}
        if engine_cache is not None:
            engine_cache.mkdir(parents=True, exist_ok=True)
            options |= {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(engine_cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(engine_cache),
            }
        return options
    if name == PROVIDERS["cuda"]:
        return {"cudnn_conv_algo_search": "HEURISTIC"}
    return {}


def nvidia_library_dirs(onnxruntime_dir: Path, search_path: Sequence[str], cuda_major: str) -> list[Path] | None:
    """Where ``preload_dlls`` must look for the pip CUDA and cuDNN libraries, or None for its default.

    ``onnxruntime.preload_dlls()`` looks for the ``nvidia-*`` wheels' libraries only beside the
    ``onnxruntime`` package (its ``directory=None`` means ``onnxruntime/..``). Where onnxruntime-gpu is
    installed elsewhere than the CUDA wheels (``pip install --target``, a venv over a system
    site-packages that holds torch's CUDA libraries), nothing is found there and the CUDA provider
    silently fails to load. Then the CUDA 13 layout is looked for on ``search_path``:
    ``nvidia/cu13/lib`` (cuBLAS, cuFFT, cuRAND, NVRTC, runtime) and ``nvidia/cudnn/lib``.
    """
    if (onnxruntime_dir.parent / "nvidia").is_dir() or not cuda_major.isdigit() or int(cuda_major) < 13:
        return None  # ORT's own search covers it (CUDA 12 wheels keep one folder per library)
    for entry in search_path:
        nvidia = Path(entry or ".") / "nvidia"
        cuda, cudnn = nvidia / f"cu{cuda_major}" / "lib", nvidia / "cudnn" / "lib"
        if cuda.is_dir():
            return [cuda, *([cudnn] if cudnn.is_dir() else [])]
    return None


def _preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that ``maskserve[gpu]`` installs from pip (the
    ``nvidia-*`` wheels): they are not on the loader path, and ONNX Runtime >= 1.21 finds them
    with ``preload_dlls`` (onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    cuda_major = str(getattr(ort, "cuda_version", "") or "").split(".")[0]
    dirs = nvidia_library_dirs(Path(ort.__file__).parent, sys.path, cuda_major)
    calls: list[dict[str, Any]] = (
        [{}]
        if dirs is None
        else [{"cuda": True, "cudnn": False, "directory": str(dirs[0])}]
        + [{"cuda": False, "cudnn": True, "directory": str(d)} for d in dirs[1:]]
    )
    # preload_dlls prints what it cannot load instead of raising: keep that in the log.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            for kwargs in calls:
                preload(**kwargs)
    except Exception as exc:  # system CUDA libraries may serve instead; ORT reports what is missing
        log.warning("onnxruntime.preload_dlls failed: %s", exc)
    if printed.getvalue().strip():
        log.warning("onnxruntime.preload_dlls: %s", " ".join(printed.getvalue().split()))


def session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    """The options of every session: one model call at a time, ``intra_op_threads`` per operator
    (0: one per physical core)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    # Idle intra-op threads spin by default, waiting for the next operator: on a CPU shared
    # with the event loop and the decoding workers, that spinning takes the cores they need
    # (503s that should take milliseconds took hundreds under load). Threads sleep instead.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    return options


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        max_batch: int,
        provider: str = "auto",
        intra_op_threads: int = 0,
        engine_cache: Path | None = None,
        fp16: bool = False,
        staged: bool | None = None,
        host_head: bool = True,
    ) -> None:
        chain = provider_chain(provider, ort.get_available_providers())
        if PROVIDERS["cuda"] in chain or PROVIDERS["tensorrt"] in chain:
            _preload_cuda_libraries()
        self._options = session_options(intra_op_threads)
        self._providers = [(name, _provider_options(name, engine_cache, fp16)) for name in chain]
        self.staged = chain[0] == PROVIDERS["cpu"] if staged is None else staged
        try:
            if self.staged:
                # The host head replaces head sessions only on the CPU, where the logits are on the host.
                self._body, self._heads = self._staged_sessions(model_path, host_head and chain[0] == PROVIDERS["cpu"])
                self.session = self._body
            else:
                self.session = self._session(str(model_path))
        except Exception as exc:  # ORT and onnx raise their own types; keep one line
            raise BackendError(f"onnxruntime cannot load {model_path}: {first_line(exc)}") from exc
        self.provider = self.session.get_providers()[0]
        if self.provider != chain[0] and (provider != "auto" or self.provider == PROVIDERS["cpu"]):
            # ONNX Runtime does not fail a session whose accelerator cannot be created: it logs the
            # reason and runs on the CPU (seen with onnxruntime-gpu 1.31.1 and no CUDA libraries).
            # Pinned, that is an error; auto says so (it may settle for CUDA after a failed TensorRT).
            message = (
                f"onnxruntime could not create {chain[0]} and fell back to {self.provider}; its log above says "
                "why (for the CUDA EP usually the CUDA 13 or cuDNN 9 libraries: pip install 'maskserve[gpu]')"
            )
            if provider != "auto":
                raise BackendError(message)
            log.warning("%s", message)
        if self.provider != PROVIDERS["cpu"]:
            # A device session must not turn into a CPU session at run time: ONNX Runtime's
            # default on an EP failure inside run() is to re-create the session on the CPU.
            for session in (self.session, *(self._heads.sessions() if self.staged else ())):
                session.disable_fallback()
        self.max_batch = max_batch
        self._on_device = self.provider != PROVIDERS["cpu"]
        log.info(
            "onnxruntime %s session on %s%s",
            ort.__version__,
            ", ".join(self.session.get_providers()),
            " (staged: body, then per-task heads)" if self.staged else "",
        )
        self.host_tasks: tuple[Task, ...] = self._heads.host_tasks if self.staged else ()
        self.host_head = bool(self.host_tasks)

    def _session(self, model: str | bytes) -> ort.InferenceSession:
        return ort.InferenceSession(model, sess_options=self._options, providers=self._providers)

    def _staged_sessions(self, model_path: Path, host_head: bool) -> tuple[ort.InferenceSession, Heads]:
        import onnx
        import onnx.utils

        extractor = onnx.utils.Extractor(onnx.load(str(model_path)))
        # The body takes every graph input: the exporter may read the batch size off any of them.
        body = extractor.extract_model(list(INPUTS), list(RAW_OUTPUTS))
        heads = Heads(extractor, self._session, host_head)
        del extractor
        body_session = self._session(body.SerializeToString())
        del body
        self._body_inputs = [i.name for i in body_session.get_inputs()]
        return body_session, heads

    def run(
        self, feeds: Mapping[str, npt.NDArray[np.generic]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[np.generic]]:
        if self.staged:
            return self._run_staged(feeds, outputs)
        if self._on_device:
            # IO binding: inputs are copied once, and only the requested (compact) outputs
            # come back to the host; the rest of the graph's tensors stay on the device.
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in outputs:
                binding.bind_output(name, "cuda")
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self.session.run(list(outputs), dict(feeds))
        return dict(zip(outputs, values, strict=True))

    def _run_staged(
        self, feeds: Mapping[str, npt.NDArray[np.generic]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[np.generic]]:
        body_feeds = {name: feeds[name] for name in self._body_inputs}
        raw = dict(zip(RAW_OUTPUTS, self._body.run(list(RAW_OUTPUTS), body_feeds), strict=True))
        return self._heads.run(feeds, raw, outputs)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
        if self.staged:
            self._body = None  # type: ignore[assignment]
            self._heads.close()


class Heads:
    """The per-task heads after the body (``class_logits``, ``mask_logits``), in ONNX Runtime.

    Each task's head is its own session, so a batch pays only for the tasks it asked for. With
    ``host_head``, the heads ``maskserve.service.boundary_head`` replicates run on the host instead
    (for the images whose order it follows) from 1/4-resolution tensors that small sessions
    compute (the graph's own Softmax, Sigmoid and Einsum); their outputs equal the head sessions'.
    """

    def __init__(
        self, extractor: onnx.utils.Extractor, session: Callable[[str | bytes], ort.InferenceSession], host_head: bool
    ) -> None:
        heads = {
            task: extractor.extract_model([*INPUTS, *RAW_OUTPUTS], list(names)) for task, names in TASK_OUTPUTS.items()
        }
        found = boundary_head.graph_tensors(heads) if host_head else boundary_head.HostTensors({})
        low = found.names
        if host_head and len(low) < len(boundary_head.HOST_TASKS):
            missing = [task for task in boundary_head.HOST_TASKS if task not in low]
            log.warning("%s head stays in ONNX Runtime: not the graph boundary_head replicates", " and ".join(missing))
        if low:
            probe, feeds, expected = bilinear.resize_probe()
            cell_kernels.warm()  # compiled (or loaded from numba's cache) now, not at a first request
            if not np.array_equal(session(probe.SerializeToString()).run(None, feeds)[0], expected):
                log.warning("host head off: this onnxruntime build's Resize rounds differently from boundary_head")
                low = {}
            elif not np.array_equal(cell_kernels.upsample(feeds["x"][0], bilinear.probe_grid()), expected[0]):
                log.warning("host head off: the compiled cell kernels round differently from ONNX Runtime's Resize")
                low = {}
        self.host_tasks: tuple[Task, ...] = tuple(sorted(low))
        self._sigmoid: logistic.Sigmoid | None = None
        orders = found.panoptic_orders
        if "panoptic" in low and orders is not None and PanopticUpsampling.LOGITS in orders:
            # The logits order takes ONNX Runtime's Sigmoid after the upsampling: computed for
            # boundary pixels by this session, bounded elsewhere by facts about its kernel.
            sigmoid = logistic.session()
            if logistic.follows_onnxruntime(sigmoid):
                self._sigmoid = logistic.Sigmoid(sigmoid)
            else:
                log.warning(
                    "logits-first panoptic images stay in ONNX Runtime: this onnxruntime build's Sigmoid "
                    "is not the kernel boundary_panoptic bounds"
                )
                orders = orders - {int(PanopticUpsampling.LOGITS)}
        self._panoptic_orders = orders
        # Per set of host tasks (sorted), the session giving their 1/4-resolution tensors in order.
        self._host_low: dict[tuple[Task, ...], ort.InferenceSession] = {}
        for size in range(1, len(self.host_tasks) + 1):
            for tasks in itertools.combinations(self.host_tasks, size):
                names = [name for task in tasks for name in low[task]]
                self._host_low[tasks] = session(extractor.extract_model(list(RAW_OUTPUTS), names).SerializeToString())
        # A head the host follows for only some images keeps its session for the others.
        only_some = set() if self._follows_every_order() else {"panoptic"}
        heads = {task: head for task, head in heads.items() if task not in self.host_tasks or task in only_some}
        self._sessions = {task: session(head.SerializeToString()) for task, head in heads.items()}
        self._inputs_of = {task: [i.name for i in head.get_inputs()] for task, head in self._sessions.items()}
        if self.host_tasks:
            log.info("%s head(s) run on the host (boundary head)", " and ".join(self.host_tasks))

    @classmethod
    def on_cpu(cls, model_path: Path, intra_op_threads: int = 0, host_head: bool = True) -> Heads:
        """The heads of the bundle's graph on ONNX Runtime's CPU provider, for a body that runs in
        another runtime (``maskserve.service.backends.ov``); ``BackendError`` if they cannot load."""
        import onnx
        import onnx.utils

        options = session_options(intra_op_threads)
        providers = [PROVIDERS["cpu"]]

        def session(model: str | bytes) -> ort.InferenceSession:
            return ort.InferenceSession(model, sess_options=options, providers=providers)

        try:
            return cls(onnx.utils.Extractor(onnx.load(str(model_path))), session, host_head)
        except Exception as exc:  # ORT and onnx raise their own types; keep one line
            raise BackendError(f"onnxruntime cannot load the heads of {model_path}: {first_line(exc)}") from exc

    def sessions(self) -> list[ort.InferenceSession]:
        """The head sessions (not the host head's small ones)."""
        return list(self._sessions.values())

    def run(
        self,
        feeds: Mapping[str, npt.NDArray[np.generic]],
        raw: Mapping[str, npt.NDArray[np.generic]],
        outputs: Sequence[str],
    ) -> dict[str, npt.NDArray[np.generic]]:
        """The requested ``outputs`` of a batch, from its graph inputs and its body's raw logits
        (which are outputs too, when asked for)."""
        results: dict[str, npt.NDArray[np.generic]] = {name: raw[name] for name in outputs if name in raw}
        available = {**feeds, **raw}
        host = [
            task
            for task in self.host_tasks
            if any(name in outputs for name in TASK_OUTPUTS[task]) and self.host_follows(task, feeds)
        ]
        if host:
            results.update({k: v for k, v in self._run_host(host, available).items() if k in outputs})
        for task, names in TASK_OUTPUTS.items():
            wanted = [name for name in names if name in outputs]
            if not wanted or task in host:
                continue
            head_feeds = {name: available[name] for name in self._inputs_of[task]}
            results.update(zip(wanted, self._sessions[task].run(wanted, head_feeds), strict=True))
        return results

    def _follows_every_order(self) -> bool:
        """Whether the host's panoptic head follows the graph for every ``panoptic_upsampling`` value:
        with both orders, it takes the graph's test (``== LOGITS``, else probabilities) for any value."""
        orders = self._panoptic_orders
        return orders is None or orders >= {int(order) for order in PanopticUpsampling}

    def host_follows(self, task: Task, feeds: Mapping[str, npt.NDArray[np.generic]]) -> bool:
        """Whether the host head gives this batch's outputs of ``task`` exactly (see ``HostTensors``)."""
        if task != "panoptic" or self._follows_every_order():
            return True
        orders = list(self._panoptic_orders or ())
        return bool(np.isin(np.asarray(feeds["panoptic_upsampling"]), orders).all())

    def _run_host(
        self, tasks: Sequence[Task], available: Mapping[str, npt.NDArray[np.generic]]
    ) -> dict[str, npt.NDArray[np.generic]]:
        low = iter(self._host_low[tuple(sorted(tasks))].run(None, {name: available[name] for name in RAW_OUTPUTS}))
        canvas = (int(available["pixel_values"].shape[2]), int(available["pixel_values"].shape[3]))
        sizes = np.asarray(available["image_sizes"])
        out: dict[str, npt.NDArray[np.generic]] = {}
        for task in sorted(tasks):  # the session's outputs come in this order
            if task == "semantic":
                out |= boundary_head.semantic_outputs(next(low), sizes, canvas)
            else:
                thresholds = (np.asarray(available["score_threshold"]), np.asarray(available["mask_threshold"]))
                out |= boundary_panoptic.panoptic_outputs(
                    next(low),
                    next(low),
                    sizes,
                    *thresholds,
                    canvas,
                    mask_logits=np.asarray(available["mask_logits"]),
                    upsampling=np.asarray(available["panoptic_upsampling"]),
                    sigmoid=self._sigmoid,
                )
        return out

    def close(self) -> None:
        self._sessions = {}
        self._host_low = {}
        self._sigmoid = None
