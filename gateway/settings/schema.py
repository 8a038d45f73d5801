"""The settings structs: what a configuration file may hold, section by section.

Each field's docstring (the string under it) is its documentation: `reference.py` reads them
with `ast` to write ``docs/configuration.md``, so every field needs one. This module holds the
shared constrained types, `EMBEDDED` and the sections with no sub-sections of their own;
``redis``, ``auth`` and ``limits`` (each with sub-sections) have a module each, and `root.py`
holds the top level, `Settings`. How a file becomes `Settings` is `loading.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

EMBEDDED = "embedded"
"""`base_url` value that selects the built-in upstream, started inside the gateway process."""

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
_ORIGIN = r"^(\*|[A-Za-z][A-Za-z0-9+.-]*://[^/\s]+)$"
"""A CORS origin: scheme://host[:port] as a browser sends it in `Origin`, or `*`."""


class ProviderSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One upstream provider speaking the OpenAI Responses API, under a name of your choosing
    that ``models[].provider`` refers to."""

    base_url: str
    """Root of the provider's API including the version, e.g. ``https://api.openai.com/v1``
    (requests go to its ``/responses``); ``embedded`` for the built-in upstream, started inside
    the gateway on a loopback port."""
    api_key: str | None = None
    """The gateway's key for this provider, sent as `auth` says (never to an ``embedded``
    provider); give it as ``${VAR}``, from the environment."""
    auth: Literal["bearer", "api-key", "x-api-key", "none"] = "bearer"
    """How `api_key` is presented: ``bearer`` as ``Authorization: Bearer`` (OpenAI and most
    servers), ``api-key`` as the ``api-key`` header (Azure OpenAI), ``x-api-key`` as that header,
    ``none`` for a server that takes no key (a self-hosted vLLM: `api_key` must then be unset).
    The client's own credential is never forwarded, whatever the style."""
    drop_fields: tuple[str, ...] = ()
    """Top-level request fields removed before forwarding (OpenAI rejects ``stop`` and
    ``stream_options.include_usage`` on /v1/responses: list ``stop`` and ``stream_options``)."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra headers sent with every upstream request (e.g. ``OpenAI-Organization``); a client
    header of the same name is not forwarded."""
    forward_headers: tuple[str, ...] = ()
    """Client request headers forwarded to this provider besides those every provider gets
    (``gateway/headers.py``, ``FORWARDED``), e.g. ``[anthropic-version]``. Never one the
    gateway owns or withholds (credentials, cookies, framing, client addresses), nor one
    `headers` sets. An ``embedded`` provider also gets the mock's steering headers."""
    connect_timeout: PositiveFloat = 5.0
    """Seconds to open a connection before answering 504 (a refused connection is a 502 at
    once)."""
    read_timeout: PositiveFloat = 600.0
    """Longest silence from the upstream, in seconds: before its response headers (the client
    gets 504) and between two chunks of its body (a stream is cut, visibly; a whole answer
    gets 504)."""
    max_connections: PositiveInt = 1024
    """Most connections open to this provider at once, per worker process; further requests
    queue for one."""
    idle_timeout: PositiveFloat = 4.0
    """Seconds an idle keep-alive connection is kept for reuse; below the provider's own
    keep-alive timeout (uvicorn-based servers such as vLLM close after 5 s)."""
    max_response_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024 * 1024
    """Largest non-streamed answer relayed (the client gets 502
    ``upstream_response_too_large`` beyond it), and the most bytes a compressed answer is
    inflated to when the gateway reads its usage."""
    max_event_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024 * 1024
    """Longest line (or data of one event) of a streamed answer the gateway's usage reader
    holds. A longer one still reaches the client unchanged; it is not read, so the stream's
    usage is then estimated (``usage_estimated`` in its record)."""


class DeploymentSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One of the upstreams that serve a model: a provider, the name it knows the model by,
    and its share of the model's requests."""

    provider: str
    """Key of an entry under ``providers``."""
    upstream_model: str | None = None
    """The name this provider knows the model by, when it differs from the model's ``name``
    (an Azure OpenAI deployment's name, say)."""
    weight: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    """Its share of the model's requests against the other deployments' weights: of every
    sum-of-weights requests a replica forwards, exactly this many, spread evenly."""


class ModelSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A model clients may ask for, and the upstreams that serve it: one ``provider`` (the
    short form), or several ``deployments``."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    """What clients send as ``model``; each name is listed once."""
    provider: str | None = None
    """Key of an entry under ``providers``: the one provider serving this model (give this or
    ``deployments``)."""
    upstream_model: str | None = None
    """The name the provider knows, when it differs from ``name`` (with ``provider``; each
    deployment has its own)."""
    deployments: tuple[DeploymentSettings, ...] = ()
    """Several upstreams serving this model, each request sent to one of them by weight
    (smooth weighted round robin, on each replica); instead of ``provider``."""
    owned_by: str | None = None
    """``owned_by`` in ``/v1/models``; defaults to the (first deployment's) provider's key."""
    created: int = 0
    """``created`` (unix seconds) in ``/v1/models``."""

    def served_by(self) -> tuple[DeploymentSettings, ...]:
        """Its deployments: the short form is one, of weight 1."""
        if self.deployments:
            return self.deployments
        return (DeploymentSettings(self.provider or "", self.upstream_model),)


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The listening socket and request limits."""

    host: str = "127.0.0.1"
    """Interface to bind; ``--host`` overrides it."""
    port: Port = 8080
    """TCP port; ``--port`` overrides it."""
    max_body_bytes: PositiveInt = 10 * 1024 * 1024
    """Largest request body accepted, with or without ``Content-Length`` (413 beyond); for a
    compressed body (``Content-Encoding`` gzip, deflate or zstd), both as sent and decoded."""
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    """Largest request head (request line and headers), counted as the bytes arrive, before
    they are parsed (431 beyond)."""
    max_headers: PositiveInt = 100
    """Most header lines in one request (431 beyond)."""
    header_timeout: PositiveFloat = 30.0
    """Seconds for a request head to arrive whole: from the connection's opening (one that sends
    nothing is then closed), or from its first bytes on a kept-alive connection (408)."""
    body_min_rate: PositiveInt = 1024
    """Slowest average rate, in bytes per second, at which a request body may arrive once
    `body_rate_grace` has passed since its head (408 and the connection closed below it). Time
    the gateway is not reading the body does not count against it."""
    body_rate_grace: PositiveFloat = 10.0
    """Seconds after a request's head before `body_min_rate` applies."""
    max_connections: PositiveInt = 2048
    """Most client connections per worker process; a connection beyond is closed at once (logged
    when the cap is reached and when it is left). Keep it below the file-descriptor limit
    (``ulimit -n``) less the upstream and Redis connections."""
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    """Worker processes sharing the port (uvicorn's supervisor, which restarts one that dies);
    one per core is the usual choice. ``--workers`` overrides it. More than one needs a shared
    ``redis.url`` (not ``embedded``)."""
    drain_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    """After SIGTERM (or SIGINT): readiness fails, no new connection is accepted, and requests in
    flight (streams included) get this long (rounded up to whole seconds) to finish before they
    are cut; then the usage ledger is written out (up to 10 s) and the process exits."""
    cors_origins: tuple[Annotated[str, msgspec.Meta(pattern=_ORIGIN)], ...] = ()
    """Web origins (``https://app.example.com``, no path) whose pages may call ``/v1/``
    from a browser, or ``*`` for any; none: no CORS headers at all (see
    ``gateway/server/cors.py``)."""


class LoggingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the log lines, the canonical request lines among them, are written on stdout."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""
    format: Literal["json", "console"] = "json"
    """``json``: one object per line; ``console``: for people at a terminal."""


class LedgerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The usage ledger: one record per request in a Redis Stream, and daily sums."""

    enabled: bool = True
    """``false`` writes no usage records (the benchmark's comparison; usage is then lost).
    Without ``auth`` there is no ledger either."""
    retention_days: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """Records older than this are trimmed from the stream (Redis keeps about 750 bytes a
    record until then); a user's daily sums, kept by month, expire this long after the month
    ends."""
    buffer_records: Annotated[int, msgspec.Meta(ge=100)] = 100_000
    """Records kept in memory while Redis cannot take them; beyond, the oldest batch not yet
    sent (256 records, or a quarter of this if fewer) is dropped, and every record dropped is
    logged."""
    dedupe_seconds: Annotated[int, msgspec.Meta(ge=60)] = 86_400
    """How long a writer's last applied batch number, and a saved stream's record id, are
    remembered, so that a retried write counts once; at least 10 times `orphan_seconds`."""
    checkpoint_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """How often a running stream's usage so far is saved in Redis: a replica killed
    mid-stream loses at most this much of a stream's usage."""
    orphan_seconds: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 30.0
    """A running stream not saved for this long belongs to a replica that died: another
    replica writes its record from the last save (``end: interrupted``). At least 3 times
    `checkpoint_seconds`."""


class MetricsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Prometheus ``GET /metrics``."""

    enabled: bool = True
    """``false`` serves no ``/metrics`` and counts nothing (the benchmark's comparison)."""
    multiproc_dir: str | None = None
    """With several workers: the directory where each worker keeps its values for the others
    (a previous run's ``*.db`` files are removed at start). Default: a new directory under
    ``$TMPDIR``, removed at exit."""
