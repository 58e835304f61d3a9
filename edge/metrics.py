"""Prometheus metrics of the lane service, and the middleware that measures and logs every request.

Each app gets its own `CollectorRegistry`, so two apps in one process (tests) never collide on metric
names. Every label's values are bounded whatever clients send: routes are route *templates*
(`/v1/scans/{scan_id}`), never raw paths; methods outside the standard ones are "other"; lanes (a station
names them freely) are the first `MAX_LANE_LABELS` seen, later ones "_other".
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.logs import ACCESS_LOGGER, log_event, request_id_var

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_access_log = logging.getLogger(ACCESS_LOGGER)

#: The `method` label's values; any other method (any token is one on the wire) counts as "other".
_METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "WS"})

#: Distinct lanes kept as `lane` label values; a lane box serves a handful, so more means a station sends
#: made-up lanes (e.g. bag ids), which would otherwise add series to every scrape for good.
MAX_LANE_LABELS = 256
#: The `lane` label of lanes beyond MAX_LANE_LABELS; a real lane cannot be named so (edge.ingest: lanes
#: start with a letter or digit).
OTHER_LANE = "_other"


class _LaneLabels:
    """The lane label values in use: the first `max_lanes` lanes seen keep their names, later ones share
    OTHER_LANE. One instance for all lane metrics, so they agree on which lanes have a label."""

    def __init__(self, max_lanes: int) -> None:
        self.max_lanes = max_lanes
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def label(self, lane: str) -> str:
        with self._lock:
            if lane in self._kept:
                return lane
            if len(self._kept) < self.max_lanes:
                self._kept.add(lane)
                return lane
        return OTHER_LANE


class _ByLane:
    """A labelled metric whose `lane` label goes through `_LaneLabels` (`.labels(...)` as Prometheus's)."""

    def __init__(self, metric: Counter, lanes: _LaneLabels) -> None:
        self.metric = metric
        self._lanes = lanes

    def labels(self, **labels: str) -> Any:
        return self.metric.labels(**{**labels, "lane": self._lanes.label(labels["lane"])})


class EdgeMetrics:
    """The service's metrics, registered in `registry` (a fresh one per app by default)."""

    def __init__(self, *, batch_max_size: int, registry: CollectorRegistry | None = None,
                 max_lanes: int | None = None) -> None:
        """max_lanes: distinct `lane` label values (default MAX_LANE_LABELS)."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "xscreen_http_requests",
            "HTTP requests, WebSocket sessions and scans sent over a stream (method SCAN, route /v1/stream) by "
            "route template, method and status.",
            ["route", "method", "status"], registry=r,
        )
        self.request_latency = Histogram(
            "xscreen_http_request_latency_seconds",
            "Request latency (a stream's scans: each scan's, method SCAN) by route template and method.",
            ["route", "method"], buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        # One bucket per possible size: the distribution of batch sizes is the point of micro-batching.
        self.batch_size = Histogram(
            "xscreen_batch_size", "Scans per model call.",
            buckets=tuple(float(i) for i in range(1, batch_max_size + 1)), registry=r,
        )
        self.queue_depth = Gauge("xscreen_queue_depth", "Scans waiting for the model.", registry=r)
        self.inference_latency = Histogram(
            "xscreen_inference_latency_seconds", "Model call latency (one batch).",
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        lanes = _LaneLabels(MAX_LANE_LABELS if max_lanes is None else max_lanes)
        self.scans = _ByLane(Counter(
            "xscreen_scans", f"Scans screened, by lane and outcome (lanes beyond the first {lanes.max_lanes}: "
                             f"{OTHER_LANE}).", ["lane", "alarm"], registry=r,
        ), lanes)
        self.alarms = _ByLane(Counter(
            "xscreen_alarms", "Alarmed scans by class and lane (a scan alarming on two classes counts in both; "
                              f"lanes beyond the first {lanes.max_lanes}: {OTHER_LANE}).",
            ["class_name", "lane"], registry=r,
        ), lanes)
        self.rejections = Counter(
            "xscreen_rejections", "Requests refused before screening, by reason.", ["reason"], registry=r
        )
        self.outbox = Counter("xscreen_webhook_deliveries", "Webhook delivery attempts by result.", ["result"], registry=r)
        self.model_info = Info("xscreen_model", "The model package the lane runs.", registry=r)

    def set_model(self, *, name: str, version: str, sha256: str, classes: list[str], providers: list[str]) -> None:
        self.model_info.info(
            {"name": name, "version": version, "sha256": sha256, "classes": ",".join(classes),
             "providers": ",".join(providers)}
        )


class RequestMetricsMiddleware:
    """Pure ASGI middleware: request id, latency, Prometheus counters and one JSON access-log line per request.

    The route template and the authenticated station are read back from the scope after the app ran
    (FastAPI stores the matched route in `scope["route"]`; our auth dependency stores the principal's name
    in `scope["state"]`).
    """

    def __init__(self, app: ASGIApp, metrics: EdgeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        # Clip a caller-supplied id: it goes into every log line.
        request_id = request_id[:64]
        scope.setdefault("state", {})["request_id"] = request_id
        request_id_var.set(request_id)  # for every record logged while serving it (edge.logs)
        start = time.perf_counter()
        status = {"code": 500}

        api = str(scope.get("path", "")).startswith("/v1/")

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1", "replace")))
                names = {k.lower() for k, _v in headers}
                # No answer is read as another type than it says (a station's upload served back included),
                # and none of the API's, which carry scans, reviews and images, stays in a browser's cache.
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if api and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            elif message["type"] == "websocket.accept":
                status["code"] = 101
            elif message["type"] == "websocket.close" and status["code"] == 500:
                status["code"] = 403  # closed before accepting: refused handshake
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            latency_s = time.perf_counter() - start
            route = _route_template(scope)
            method = scope.get("method", "WS")
            method_label = method if method in _METHOD_LABELS else "other"
            self.metrics.requests.labels(route=route, method=method_label, status=str(status["code"])).inc()
            self.metrics.request_latency.labels(route=route, method=method_label).observe(latency_s)
            state: dict[str, Any] = scope.get("state", {})
            log_event(
                _access_log,
                "request",
                request_id=request_id,
                method=method,
                route=route,
                path=scope.get("path"),
                status=status["code"],
                latency_ms=round(latency_s * 1000.0, 2),
                station=state.get("station"),
                principal=state.get("principal"),
            )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # Static files are mounted, not routed: one label for all (the mount sets "endpoint" and empty
    # "path_params", so this comes first, or every file name asked for, found or not, would be a label).
    # Plain Starlette routes (the UI's) carry no "route"; without path parameters their path is their
    # template. Anything else unmatched is one label.
    # (Inside the mount Starlette has moved the mount's path into "root_path".)
    root, path = scope.get("root_path", ""), scope.get("path", "")
    if root.endswith("/ui/static") or path.startswith((root + "/ui/static/", "/ui/static/")):
        return "/ui/static"
    if scope.get("endpoint") is not None and not scope.get("path_params"):
        return str(scope.get("path", "unmatched"))
    return "unmatched"
