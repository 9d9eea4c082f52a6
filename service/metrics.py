"""Every Prometheus metric the server exports, declared once. See docs/metrics.md.

Metrics live in a per-app ``CollectorRegistry`` (not the global one), so that several apps in
one process (tests) do not collide and ``/metrics`` shows exactly this server's series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from maskserve.service.errors import ERROR_TABLE

# Segmentation requests take from ~5 ms (tiny model, GPU) to tens of seconds (large images on
# CPU under load): log-spaced buckets over that range.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
STAGES = ("decode", "preprocess", "queue_wait", "inference", "postprocess", "encode")
REJECT_REASONS = tuple(dict.fromkeys(reason for _, _, reason in ERROR_TABLE.values() if reason is not None))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "maskserve_request_duration_seconds",
            "End-to-end time of POST /v1/segment, from the request's arrival to its response.",
            ["task", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "maskserve_stage_duration_seconds",
            "Time per request spent in each stage: decode, preprocess, queue_wait (waiting for a "
            "batch), inference (the model call of its batch), postprocess, encode (JSON).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "maskserve_batch_size",
            "Images per model call.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
            registry=r,
        )
        self.queue_depth = Gauge("maskserve_queue_depth", "Images waiting for a batch.", registry=r)
        self.inflight = Gauge(
            "maskserve_inflight_requests",
            "Admitted requests: their body is read and they are being decoded, queued, run or post-processed.",
            registry=r,
        )
        self.held_body_bytes = Gauge(
            "maskserve_held_body_bytes",
            "Request body bytes reserved in the body budget (MASKSERVE_BODY_BUDGET_MB) right now.",
            registry=r,
        )
        self.connections = Gauge("maskserve_open_connections", "Open HTTP connections.", registry=r)
        self.padding_ratio = Histogram(
            "maskserve_canvas_padding_ratio",
            "Fraction of the canvas that is letterbox padding, per image (compute spent on nothing).",
            buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.input_megapixels = Histogram(
            "maskserve_input_megapixels",
            "Decoded image size in megapixels.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 40.0),
            registry=r,
        )
        self.response_bytes = Histogram(
            "maskserve_response_bytes",
            "Size of successful JSON responses.",
            buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
            registry=r,
        )
        self.segments_per_image = Histogram(
            "maskserve_segments_per_image",
            "Segments returned per image.",
            buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.rejected = Counter(
            "maskserve_rejected_total",
            "Requests refused before inference, by reason: queue_full (503), deadline (504), "
            "payload (413/415/400 body problems), bad_image (undecodable), draining (503 on shutdown).",
            ["reason"],
            registry=r,
        )
        self.inferences = Counter(
            "maskserve_inferences_total",
            "Images run through the model (Triton: nv_inference_count).",
            registry=r,
        )
        self.batches = Counter(
            "maskserve_batches_total",
            "Model calls; inferences / batches is the mean batch size (Triton: nv_inference_exec_count).",
            registry=r,
        )
        self.batch_failures = Counter(
            "maskserve_batch_failures_total", "Model calls that raised; every request in them got a 500.", registry=r
        )
        self.model_info = Info("maskserve_model", "The served bundle and runtime.", registry=r)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for stage in STAGES:
            self.stage_duration.labels(stage)
