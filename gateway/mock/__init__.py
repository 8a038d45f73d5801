"""The product's own upstream: a small server speaking /v1/responses like OpenAI does.

Tests, the quickstart and the benchmark use it. See `server` for the per-request headers that
steer it (delays, reply text, fault modes).
"""

from .server import MockSettings, create_mock_app, start_mock_server

__all__ = ["MockSettings", "create_mock_app", "start_mock_server"]
