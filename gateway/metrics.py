"""Prometheus metrics, named after the OpenTelemetry GenAI conventions where one exists.

One `Metrics` per app, each with its own registry (nothing at module level). With several
worker processes, `gateway serve` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before the workers start: every worker then writes its values to its own memory-mapped files
there, and `/metrics`, whichever worker answers it, adds up the files of all of them.

Labels take configured values only (a model the gateway does not serve is ``-``): a client
cannot create series by sending made-up names.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .exchange import Exchange

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Bucket boundaries advised by the GenAI semantic conventions.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)  # fmt: skip
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                0.75, 1.0, 2.5)  # fmt: skip

MODEL = "gen_ai_request_model"
PROVIDER = "gen_ai_provider_name"
OPERATION = ("gen_ai_operation_name", "chat")


class _Family:
    """A labelled metric whose children are looked up once per label set."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """Every metric the gateway exports, and their rendering for `/metrics`."""

    def __init__(self, multiproc_dir: str | None = None) -> None:
        self.multiproc_dir = multiproc_dir
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry

        def family(kind: Callable[..., Any], name: str, doc: str, *labels: str, **kw: Any) -> Any:
            return _Family(kind(name, doc, labels, registry=r, **kw))

        self.requests = family(
            Counter, "gateway_requests", "Requests to /v1/responses by model, provider, HTTP "
            "status and how they ended (completed, incomplete, failed, rejected, error, "
            "client_disconnected).",
            MODEL, PROVIDER, "http_response_status_code", "outcome",
        )  # fmt: skip
        self.duration = family(
            Histogram, "gen_ai_server_request_duration", "Time from a request's arrival to "
            "the end of its answer.",
            MODEL, PROVIDER, "http_response_status_code", unit="seconds",
            buckets=DURATION_BUCKETS,
        )  # fmt: skip
        self.ttft = family(
            Histogram, "gen_ai_server_time_to_first_token", "Time from a request's arrival "
            "to its first output token (streams).",
            MODEL, PROVIDER, unit="seconds", buckets=TTFT_BUCKETS,
        )  # fmt: skip
        self.tpot = family(
            Histogram, "gen_ai_server_time_per_output_token", "Time per output token after "
            "the first (streams).",
            MODEL, PROVIDER, unit="seconds", buckets=TPOT_BUCKETS,
        )  # fmt: skip
        self.token_usage = family(
            Histogram, "gen_ai_client_token_usage", "Tokens per request, as the provider "
            "reported them (gen_ai_token_type input or output).",
            OPERATION[0], MODEL, PROVIDER, "gen_ai_token_type", buckets=TOKEN_BUCKETS,
        )  # fmt: skip
        self.tokens = family(
            Counter, "gateway_tokens", "Tokens the providers reported, by type: input, "
            "cached_input (part of input), output, reasoning (part of output).",
            MODEL, PROVIDER, "gen_ai_token_type",
        )  # fmt: skip
        self.streams = family(
            Gauge, "gateway_streams_in_flight", "Streamed answers being relayed now.",
            MODEL, multiprocess_mode="livesum",
        )  # fmt: skip
        self.rate_limited = family(
            Counter, "gateway_rate_limited", "Requests refused with 429, by the limit "
            "reached and the scope it belongs to (user, key, model).",
            "limit", "scope",
        )  # fmt: skip
        self.upstream_errors = family(
            Counter, "gateway_upstream_errors", "Upstream failures: unreachable, timeout, "
            "5xx, refused credentials, stream broken off.",
            PROVIDER, "error_type",
        )  # fmt: skip
        self.redis_errors = family(
            Counter, "gateway_redis_errors", "Redis calls that failed or were refused by "
            "the open circuit breaker, by operation.",
            "operation",
        )  # fmt: skip
        self.policy = family(
            Counter, "gateway_redis_policy_decisions", "Requests decided by the Redis "
            "failure policy because Redis could not be asked: served without the check, or "
            "refused (fail_closed; or fail_open with no earlier look at the key to go by).",
            "subsystem", "policy", "decision",
        )  # fmt: skip
        self.ledger_backlog = Gauge(
            "gateway_ledger_backlog", "Usage records waiting to be written to Redis.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.ledger_written = Counter(
            "gateway_ledger_written", "Usage records written to the ledger.", registry=r
        )
        self.ledger_dropped = Counter(
            "gateway_ledger_dropped", "Usage records dropped (buffer full, or refused by "
            "Redis); each is also logged.", registry=r,
        )  # fmt: skip

        # Read from Redis at each scrape (`Runtime.refresh_gauges`): what to alert on before
        # a full Redis refuses writes (see deploy/base/prometheusrule.yaml).
        self.redis_memory_used = Gauge(
            "gateway_redis_memory_used_bytes", "Memory the Redis node holding the usage "
            "ledger uses (INFO used_memory), read at each scrape; NaN when it could not be read.",
            registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.redis_memory_max = Gauge(
            "gateway_redis_memory_max_bytes", "That node's maxmemory (0: no limit). When "
            "used memory reaches it, a Redis with maxmemory-policy noeviction refuses writes: "
            "quota checks fail (redis.on_failure decides) and usage records wait, then drop.",
            registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        for unknown in (self.redis_memory_used, self.redis_memory_max):
            unknown.set(math.nan)  # until read (0 is "no limit")

    def observe(self, ex: Exchange, ended: float) -> None:
        """Count one finished request; `ended`: `perf_counter()` when its answer ended."""
        routed = ex.provider is not None  # a configured model: a bounded set of labels
        model = (ex.model or "-") if routed else "-"
        provider = ex.provider or "-"
        status = str(ex.status)
        self.requests(model, provider, status, ex.end()).inc()
        self.duration(model, provider, status).observe(ended - ex.started)
        if ex.rate_limit is not None:
            self.rate_limited(*ex.rate_limit).inc()
        error = ex.upstream_error()
        if error is not None:
            self.upstream_errors(provider, error).inc()
        if ex.first_token_at is not None:
            self.ttft(model, provider).observe(ex.first_token_at - ex.started)
        usage = ex.outcome.usage if ex.outcome is not None else None
        if usage is None:
            return
        self.token_usage(OPERATION[1], model, provider, "input").observe(usage.input_tokens)
        self.token_usage(OPERATION[1], model, provider, "output").observe(usage.output_tokens)
        for kind, amount in (
            ("input", usage.input_tokens),
            ("cached_input", usage.cached_input_tokens),
            ("output", usage.output_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            if amount:
                self.tokens(model, provider, kind).inc(amount)
        if ex.first_token_at is not None and usage.output_tokens > 1:
            per_token = (ended - ex.first_token_at) / (usage.output_tokens - 1)
            self.tpot(model, provider).observe(per_token)

    def render(self) -> bytes:
        """The text exposition: this process's values, or every worker's."""
        if self.multiproc_dir is None:
            return generate_latest(self.registry)
        _forget_dead_workers(self.multiproc_dir)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def _forget_dead_workers(path: str) -> None:
    """Drop the live gauges of workers that are gone (a replaced worker's streams ended)."""
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = int(file.rsplit("_", 1)[1].removesuffix(".db"))
        if not _alive(pid):
            with contextlib.suppress(FileNotFoundError):  # a concurrent scrape was first
                mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
