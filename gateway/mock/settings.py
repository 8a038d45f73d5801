"""The mock's server-wide defaults; each request may override the delays with headers."""

from __future__ import annotations

import math

import msgspec


class MockSettings(msgspec.Struct, frozen=True):
    """How the mock answers when a request does not say otherwise."""

    ttft_ms: float = 0.0
    """Delay before the first output delta, in milliseconds (non-streaming: before answering)."""
    tokens_per_second: float = 0.0
    """Pace of the deltas; 0 sends them back to back without sleeping."""
    models: tuple[str, ...] = ("mock-gpt",)
    """Models it answers for; any other gets 404 `model_not_found`."""
    static: bool = False
    """Benchmark mode: the answer to each distinct request body (without `x-mock-*` headers) is
    rendered once, then replayed from memory in one write, so the upstream costs next to
    nothing. Delays do not apply, and ids and timestamps repeat: never use it where those
    matter."""

    def __post_init__(self) -> None:
        """Refuse delays the server could not honour, when the settings are made."""
        for name, value in (
            ("ttft_ms", self.ttft_ms),
            ("tokens_per_second", self.tokens_per_second),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"MockSettings.{name}: expected a finite number >= 0, got {value}")
        if not self.models:
            raise ValueError("MockSettings.models: expected at least one model")
