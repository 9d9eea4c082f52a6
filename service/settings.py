"""Every server setting, in one object. Each is also an env var: ``MASKSERVE_<NAME>``.

Built explicitly (``Settings()`` reads the environment, ``Settings(**overrides)`` for tests)
and passed to ``create_app``; nothing is read at import time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, AnyHttpUrl, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from maskserve.bundle import DEFAULT_BUNDLE, Canvas
from maskserve.service.backends import BackendOptions, Provider
from maskserve.service.decode import DEFAULT_MAX_IMAGE_PIXELS


def _default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


def _canvas_list(value: object) -> object:
    """``"512x512,512x704"`` (the env var form) or a list of such strings to Canvases."""
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
        if not value:
            raise ValueError("canvases must not be empty")
    if isinstance(value, list | tuple):
        return [Canvas.parse(item) if isinstance(item, str) else item for item in value]
    return value


_HOST_ENTRY = re.compile(r"^(?:[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$")


def _host_list(value: object) -> object:
    """``"ls.example.com, files.example.com:9000"`` (the env var form) to lower-case ``host`` or
    ``host:port`` entries; a URL, a path or credentials are refused, not guessed at."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list | tuple):
        entries = [str(part).strip().lower() for part in value if str(part).strip()]
        for entry in entries:
            if not _HOST_ENTRY.match(entry):
                raise ValueError(f"{entry!r} is not a host name or host:port (no scheme, path or user)")
        return entries
    return value


def _renamed_panoptic_rule(value: object) -> object:
    """``paper`` named Mask2Former's rule after MaskFormer's paper; say what it became."""
    if isinstance(value, str) and value.strip().lower() == "paper":
        raise ValueError(
            "'paper' is no longer a panoptic rule: use 'maskformer' (the default, facebookresearch/MaskFormer), "
            "'mask2former' (what 'paper' did) or 'transformers'"
        )
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MASKSERVE_", extra="forbid", validate_default=True)

    # --- model -------------------------------------------------------------------------------
    bundle: Path = Field(
        DEFAULT_BUNDLE,
        description="Bundle directory to serve. Default: the embedded demo model (circles, squares, "
        "triangles, sky, ground). Point it at your own `maskserve export` output.",
    )
    backend: Literal["auto", "onnxruntime", "openvino", "tensorrt"] = Field(
        "auto",
        description="Runtime. `auto` picks native TensorRT when its engine and a GPU are present, else OpenVINO "
        "for a bf16 bundle on a CPU where it is installed (`maskserve[cpu,openvino]`: the only CPU runtime here "
        "with bf16 kernels), else ONNX Runtime. Pin `openvino` to run fp32 bundles there too (5-20% faster on the "
        "Swin-T body across runs here, docs/cpu-runtimes.md and docs/benchmarks.md). Pin it to make a deployment "
        "fail loudly instead of falling back.",
    )
    provider: Provider = Field(
        "auto",
        description="ONNX Runtime execution provider. `auto` tries TensorRT EP, then CUDA EP, then CPU. "
        "Pin `cpu` on GPU machines shared with other jobs, or `cuda` to skip TensorRT engine builds.",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Threads of one model call: ONNX Runtime's intra-op threads, OpenVINO's "
        "INFERENCE_NUM_THREADS (0: one per physical core). Lower it when several replicas share a host, so "
        "they do not oversubscribe the cores.",
    )
    openvino_hint: Literal["latency", "throughput"] = Field(
        "latency",
        description="OpenVINO's PERFORMANCE_HINT. `latency` runs each model call on all the threads; `throughput` "
        "splits them into streams that run calls side by side, which only pays when several callers share one "
        "Segmenter: the server makes one model call at a time, so keep `latency` there.",
    )
    engine_cache: Path | None = Field(
        None,
        description="Directory for TensorRT engines and timing caches (TensorRT backend and EP). Mount a "
        "volume here so restarts reuse engines instead of rebuilding them for minutes.",
    )
    engine_precision: Literal["fp16", "fp32"] = Field(
        "fp16",
        description="Precision of the TensorRT engine the native backend builds. fp16 is about twice as fast; "
        "the build verifies it against ONNX Runtime (>= 99.5% semantic agreement). Use fp32 to rule it out "
        "when accuracy matters more than speed.",
    )
    cuda_graphs: bool = Field(
        False,
        description="Native TensorRT backend: record each (batch, canvas) launch as a CUDA graph and replay it, "
        "saving CPU launch overhead on small models. Costs GPU memory per shape.",
    )
    precision_fallback: Literal["refuse", "fp32"] = Field(
        "refuse",
        description="What to do with a bf16 bundle where it cannot run in bf16 (a CPU without avx512_bf16 or "
        "amx_bf16, or a runtime without bfloat16 kernels): `refuse` to start, with one line saying why, or "
        "serve its graph in `fp32` (about twice the latency; /v1/model and maskserve_model_info say fp32). "
        "Keep `refuse` where replicas were sized for bf16 throughput.",
    )
    model_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        max_length=253,
        description="The model's name in the Open Inference Protocol routes (`/v2/models/<name>/infer`). Default: "
        "the bundle's name. KServe routes by the InferenceService's name, so its runtime sets this to it.",
    )
    panoptic_rule: Annotated[
        Literal["maskformer", "mask2former", "transformers"], BeforeValidator(_renamed_panoptic_rule)
    ] = Field(
        "maskformer",
        description="Panoptic merging rule, named for its source. `maskformer` is facebookresearch/MaskFormer's "
        "panoptic_inference (the model's own reference); `mask2former` is Mask2Former's, which also drops the "
        "pixels a segment wins below the mask threshold; `transformers` reproduces "
        "MaskFormerImageProcessor.post_process_panoptic_segmentation, for users comparing with it. See "
        "docs/postprocessing.md.",
    )

    # --- batching ----------------------------------------------------------------------------
    max_batch_size: int = Field(
        4,
        ge=1,
        le=256,
        description="Most images per model call (capped by the bundle's max batch). Raise it on GPUs, "
        "where a batch of 8-32 costs little more than one image; keep it low on CPUs.",
    )
    max_delay_ms: float = Field(
        5.0,
        ge=0,
        le=10_000,
        description="How long the oldest queued image may wait for others to join its batch, at most as "
        "long as the last model call at its canvas took (waiting longer than a call helps nobody). Higher "
        "trades latency for throughput under load; 0 runs whatever is queued at once.",
    )
    max_queue: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Images admitted and not yet answered by the model (being decoded, queued, or in the "
        "running batch). Beyond it requests get 503 with Retry-After at once, before their image is "
        "decoded. Size it to what you can serve within the request timeout.",
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Deadline per request, from the arrival of its headers to its response. Past it the "
        "request gets 504 wherever it is (reading, decoding, queued, post-processing), and the work it "
        "would still cause is dropped. Set it just under your client or load-balancer timeout.",
    )
    canvases: Annotated[list[Canvas] | None, NoDecode, BeforeValidator(_canvas_list)] = Field(
        None,
        description="Canvas shapes to letterbox into, e.g. `512x512,512x704,704x512` (multiples of 32). "
        "Each image goes to the one that wastes the fewest pixels. Default: the bundle's canvases.",
    )
    workers: int = Field(
        default_factory=_default_workers,
        ge=1,
        le=64,
        description="Threads for decoding, preprocessing, post-processing and RLE, off the event loop.",
    )
    worker_nice: int = Field(
        0,
        ge=0,
        le=19,
        description="How much lower those threads' scheduling priority is than the model call's (Linux niceness, "
        "per thread): under load the model's threads get the cores first and decoding and post-processing the "
        "rest, instead of slowing every model call down. 0 treats them alike.",
    )

    # --- limits ------------------------------------------------------------------------------
    max_body_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1024,
        description="Largest accepted request body (413 beyond). Raise it for large TIFFs.",
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        description="Largest accepted image, in pixels, checked from the header before decoding (413 "
        "beyond): the guard against decompression bombs. Memory per image is linear in its pixels "
        "(see docs/reliability.md), whatever its aspect ratio.",
    )
    body_budget_mb: float = Field(
        256.0,
        gt=0,
        le=1_000_000,
        description="Request bodies held in memory at once, in MiB, counted by their declared length (a "
        "body without Content-Length counts as MASKSERVE_MAX_BODY_BYTES) until their image is decoded. "
        "Beyond it requests get 503 with Retry-After before their body is read.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Time for a request's headers to arrive, from the connection's first byte (or the end "
        "of the previous response): past it the client gets 408 (or the connection is closed, if it sent "
        "nothing). The guard against slowloris clients holding connections.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Time for a request's whole body to arrive once its headers have: past it 408, and "
        "its body budget is freed. Raise it for large uploads over slow links.",
    )
    keep_alive_timeout_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="How long an idle keep-alive connection stays open after a response. Keep it below "
        "your load balancer's idle timeout so the server is never the one to close a reused connection.",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="Open HTTP connections at once. Requests on connections beyond it get 503 with "
        "Retry-After and the connection is closed. Bound it by file descriptors and memory.",
    )

    # --- access ------------------------------------------------------------------------------
    api_key: SecretStr | None = Field(
        None,
        description="When set, every route except the liveness and readiness probes needs "
        "`Authorization: Bearer <key>` (401 otherwise). Prefer MASKSERVE_API_KEY_FILE for secrets.",
    )
    api_key_file: Path | None = Field(
        None,
        description="A file holding the API key (surrounding whitespace ignored), e.g. a mounted "
        "Kubernetes Secret or Docker secret. Exclusive with MASKSERVE_API_KEY.",
    )
    metrics_without_key: bool = Field(
        False,
        description="Serve /metrics without the API key, for a Prometheus that scrapes from inside the "
        "cluster without credentials.",
    )

    # --- Label Studio ML backend (/labelstudio/) ----------------------------------------------
    labelstudio_allowed_hosts: Annotated[list[str], NoDecode, BeforeValidator(_host_list)] = Field(
        default_factory=list,
        description="Hosts (`name` for any port, or `name:port`) whose http(s) image URLs the Label Studio backend "
        "may fetch, comma-separated; the `LABEL_STUDIO_URL` host is always allowed. Anything else is refused: an "
        "open fetcher lets any caller make this server request internal addresses. Data URLs need no host.",
    )
    labelstudio_url: AnyHttpUrl | None = Field(
        None,
        validation_alias=AliasChoices("labelstudio_url", "MASKSERVE_LABELSTUDIO_URL", "LABEL_STUDIO_URL"),
        description="Label Studio's base URL (also read from `LABEL_STUDIO_URL`, as Label Studio's own ML backends "
        "do). Tasks whose image is an upload (`/data/upload/...`) or a cloud-storage URI are fetched from it.",
    )
    labelstudio_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("labelstudio_api_key", "MASKSERVE_LABELSTUDIO_API_KEY", "LABEL_STUDIO_API_KEY"),
        description="Label Studio access token (also read from `LABEL_STUDIO_API_KEY`): a legacy token or a "
        "personal access token. Sent only to the `LABEL_STUDIO_URL` host.",
    )
    labelstudio_format: Literal["polygon", "brush"] = Field(
        "polygon",
        description="What Label Studio predictions use when the labeling config has both a PolygonLabels and a "
        "BrushLabels tag: polygons (editable vertices) or brush masks (exact, holes included). A config with "
        "only one of them gets that one.",
    )
    labelstudio_fetch_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Time limit for fetching one task's image, redirects included; the image may be at most "
        "`MASKSERVE_MAX_BODY_BYTES`. A task whose image cannot be fetched gets an empty prediction.",
    )

    # --- server ------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface to bind. Use 0.0.0.0 in containers.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port for the API, probes and /metrics.")
    drain_timeout_s: float = Field(
        20.0,
        ge=0,
        le=3600,
        description="On SIGTERM, how long admitted requests may take to finish. Those still running then "
        "get 503 `draining`, and the process exits within this plus a margin of about two seconds and one "
        "batch. Keep the sum below the orchestrator's grace period (terminationGracePeriodSeconds).",
    )
    warmup: bool = Field(
        True,
        description="Run every (batch size, canvas) shape once at start-up, before /readyz turns 200, so "
        "the first requests do not pay for allocation or engine builds.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Server log level; `debug` also logs every batch the batcher forms."
    )

    @model_validator(mode="after")
    def _check_bundle(self) -> Settings:
        if not self.bundle.is_dir():
            raise ValueError(f"bundle directory not found: {self.bundle}")
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set MASKSERVE_API_KEY or MASKSERVE_API_KEY_FILE, not both")
        if self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read the API key file {self.api_key_file}: {exc.strerror}") from None
            if not key:
                raise ValueError(f"the API key file {self.api_key_file} is empty")
            self.api_key = SecretStr(key)
        elif self.api_key is not None and not self.api_key.get_secret_value().strip():
            raise ValueError("MASKSERVE_API_KEY is empty: unset it to serve without a key")
        return self

    @property
    def body_budget_bytes(self) -> int:
        return int(self.body_budget_mb * 1024 * 1024)

    def backend_options(self) -> BackendOptions:
        return BackendOptions(
            backend=self.backend,
            provider=self.provider,
            intra_op_threads=self.intra_op_threads,
            openvino_hint=self.openvino_hint,
            engine_cache=self.engine_cache,
            engine_precision=self.engine_precision,
            cuda_graphs=self.cuda_graphs,
        )
