"""Probes: /healthz (the process is alive) and /readyz (it can serve requests)."""

from __future__ import annotations

from litestar import Response, get

from .runtime import Runtime


@get("/healthz", sync_to_thread=False, include_in_schema=False)
def healthz() -> dict[str, str]:
    """Alive: the event loop answers."""
    return {"status": "ok"}


@get("/readyz", sync_to_thread=False, include_in_schema=False)
def readyz(runtime: Runtime) -> Response[dict[str, str]]:
    """Ready: configuration loaded and every resource opened."""
    if runtime.ready:
        return Response({"status": "ready"})
    return Response({"status": "not ready"}, status_code=503)
