"""Probes: /healthz (the process is alive), /readyz (it should get traffic); /metrics."""

from __future__ import annotations

from typing import Any

from litestar import Response, get

from ..metrics import CONTENT_TYPE
from ..runtime import Runtime


@get("/healthz", sync_to_thread=False, include_in_schema=False)
def healthz() -> dict[str, str]:
    """Alive: the event loop answers."""
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(runtime: Runtime) -> Response[dict[str, Any]]:
    """Ready: started, and Redis reachable unless the policy is ``fail_open``.

    While Redis is down this probes it (at most once per breaker cooldown), so a replica taken
    out of rotation comes back by itself.
    """
    report = await runtime.readiness()
    return Response(report, status_code=200 if report["ready"] else 503)


@get("/metrics", include_in_schema=False)
async def metrics(runtime: Runtime) -> Response[bytes]:
    """Prometheus text exposition: every worker's values when there are several."""
    await runtime.refresh_gauges()
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
