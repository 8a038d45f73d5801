"""The product's own upstream: a small server speaking /v1/responses like OpenAI does.

Tests, the quickstart and the benchmark use it. Its answers are deterministic from the input
(`text`), function tools are called with sample arguments (`tools`), and request headers steer
delays, the reply text and fault modes (`faults`; their names: `STEERING_HEADERS`, which the
gateway forwards to an `embedded` provider, and to another only if it lists them in
`forward_headers`).

    runner, base_url = await start_mock_server(MockSettings(ttft_ms=50))
    ...  # base_url is e.g. http://127.0.0.1:43123/v1
    await runner.cleanup()

or from a shell: `python -m gateway.mock --port 8081`.
"""

from .faults import HEADERS as STEERING_HEADERS
from .server import create_mock_app, start_mock_server
from .settings import MockSettings
from .text import count_tokens, tokenize

__all__ = [
    "STEERING_HEADERS",
    "MockSettings",
    "count_tokens",
    "create_mock_app",
    "start_mock_server",
    "tokenize",
]
