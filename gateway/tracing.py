"""OpenTelemetry traces: an optional extra (``pip install 'gateway[traces]'``), off by default.

``GATEWAY_TRACES=on`` exports a span per request and one per provider attempt
over OTLP/HTTP (the SDK reads ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the other
standard ``OTEL_*`` variables). A client's W3C ``traceparent`` makes the
request span its child, and each attempt's ``traceparent`` goes to the
provider, so a trace runs client → gateway → provider.

Off, the only cost is ``if tracing.tracer is not None`` in the upstream stage:
the SDK is not even imported. The request span is opened by the first
attempt (its start set to the request's arrival) or, for answers no provider
was asked for, by the finish hook; the finish hook ends it with what the
Outcome says.
"""

from __future__ import annotations

import time
from time import perf_counter
from typing import Any

tracer: Any = None  # an opentelemetry Tracer once enable() ran; None: tracing off
_propagator: Any = None


def enable(exporter: Any = None, service_name: str = "ai-gateway") -> None:
    """Install the SDK's tracer (``exporter``: for tests; default OTLP over HTTP), batching off the loop."""
    global tracer, _propagator
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())  # a thread sends batches: never the event loop
    else:
        processor = SimpleSpanProcessor(exporter)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("gateway")
    _propagator = TraceContextTextMapPropagator()


def disable() -> None:
    global tracer
    tracer = None


def _wall_ns(perf: float) -> int:
    """A perf_counter() reading as wall-clock nanoseconds (span times are wall clock)."""
    return time.time_ns() - int((perf_counter() - perf) * 1e9)


def request_span(req) -> Any:
    """The request's span, opened on first use with the request's arrival as its start."""
    span = req.trace
    if span is None:
        parent = _propagator.extract(req.headers)  # the client's traceparent, if it sent one
        span = req.trace = tracer.start_span(
            "chat " + req.model, context=parent, start_time=_wall_ns(req.started),
            attributes={"gen_ai.request.model": req.model, "gateway.request_id": req.request_id})
    return span


def start_attempt(req, deployment, headers: dict[str, str]) -> Any:
    """A child span for one provider call; its traceparent goes into the upstream request's headers."""
    from opentelemetry import trace

    parent = trace.set_span_in_context(request_span(req))
    span = tracer.start_span(
        f"{deployment.provider} {deployment.model}", context=parent, kind=trace.SpanKind.CLIENT,
        attributes={"gen_ai.system": deployment.provider, "gen_ai.request.model": deployment.model,
                    "gateway.deployment": deployment.name})
    _propagator.inject(headers, context=trace.set_span_in_context(span))
    return span


def end_attempt(span, err) -> None:
    if err is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, err.code or str(err.upstream_status or err.status)))
        span.set_attribute("http.response.status_code", err.upstream_status or err.status)
    span.end()


def on_finish(req, o) -> None:
    """The finish listener: closes the request span with the Outcome's facts (opens it for cache hits)."""
    if req is None:
        return  # refused at admission: no model, no provider; the access log and metrics have it
    span = request_span(req)
    d = o.deployment
    span.set_attributes({
        "http.response.status_code": o.status, "gateway.surface": o.surface, "gateway.cache": o.cache or "off",
        "gateway.attempts": o.attempts, "gen_ai.usage.input_tokens": o.prompt_tokens,
        "gen_ai.usage.output_tokens": o.completion_tokens,
    })
    if d is not None:
        span.set_attribute("gateway.deployment", d.name)
    if o.error_type is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, f"{o.error_type}: {o.error_code}"))
    span.end(end_time=_wall_ns(o.finished))
