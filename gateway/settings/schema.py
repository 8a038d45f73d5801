"""Typed settings, decoded once from a YAML file.

A bad file fails at startup with a `ConfigError` naming the file, the field path and what was
expected. Secrets are never written in the file itself: ``${VAR}`` (or ``${VAR:-default}``)
expands from the environment when the file is loaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from ..headers import forwardable

EMBEDDED = "embedded"
"""`base_url` value that selects the built-in upstream, started inside the gateway process."""

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")
_MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
_ORIGIN = r"^(\*|[A-Za-z][A-Za-z0-9+.-]*://[^/\s]+)$"
"""A CORS origin: scheme://host[:port] as a browser sends it in `Origin`, or `*`."""


_ENUMS = {
    "level": ("debug", "info", "warning", "error"),
    "format": ("json", "console"),
    "on_failure": ("fail_closed", "fail_open"),
    "mode": ("standalone", "sentinel", "cluster"),
}


class ConfigError(Exception):
    """The configuration file is unusable; the message says where and why."""


class ProviderSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One upstream provider speaking the OpenAI Responses API."""

    base_url: str
    """Root of the provider's API including the version, e.g. ``https://api.openai.com/v1``;
    ``embedded`` for the built-in upstream."""
    api_key: str | None = None
    """Sent upstream as ``Authorization: Bearer``; expand it from the environment."""
    drop_fields: tuple[str, ...] = ()
    """Top-level request fields removed before forwarding (OpenAI rejects ``stop`` and
    ``stream_options.include_usage`` on /v1/responses: list ``stop`` and ``stream_options``)."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra headers sent with every upstream request (e.g. ``OpenAI-Organization``)."""
    forward_headers: tuple[str, ...] = ()
    """Client request headers forwarded to this provider besides those every provider gets
    (``gateway/headers.py``, ``FORWARDED``), e.g. ``[anthropic-version]``. Never one the
    gateway owns or withholds (credentials, cookies, framing, client addresses), nor one
    `headers` sets. An ``embedded`` provider also gets the mock's steering headers."""
    connect_timeout: PositiveFloat = 5.0
    """Seconds to open a connection before answering 502."""
    read_timeout: PositiveFloat = 600.0
    """Longest silence from the upstream, in seconds: before its response headers (the client
    gets 504) and between two chunks of its body (the stream is cut, visibly)."""
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 1024
    """Most connections open to this provider at once; further requests queue."""
    idle_timeout: PositiveFloat = 4.0
    """Seconds an idle keep-alive connection is kept for reuse; below the provider's own
    keep-alive timeout (uvicorn-based servers such as vLLM close after 5 s)."""
    max_response_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024 * 1024
    """Largest non-streamed answer relayed (the client gets 502 beyond it), and the most bytes
    a compressed answer is inflated to when the gateway reads its usage."""
    max_event_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024 * 1024
    """Longest line of a streamed answer the gateway's usage reader holds. A longer line still
    reaches the client unchanged; it is not read, so the stream's usage is then estimated."""


class ModelSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A model clients may ask for, and the provider that serves it."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    """What clients send as ``model``."""
    provider: str
    """Key of an entry under ``providers``."""
    upstream_model: str | None = None
    """The name the provider knows, when it differs from ``name``."""
    owned_by: str | None = None
    """``owned_by`` in ``/v1/models``; defaults to the provider's key."""
    created: int = 0
    """``created`` (unix seconds) in ``/v1/models``."""


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The listening socket and request limits."""

    host: str = "127.0.0.1"
    """Interface to bind; ``--host`` overrides it."""
    port: Port = 8080
    """TCP port; ``--port`` overrides it."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1)] = 10 * 1024 * 1024
    """Largest request body accepted, with or without ``Content-Length`` (413 beyond); for a
    compressed body (``Content-Encoding`` gzip, deflate or zstd), both as sent and decoded."""
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    """Largest request head (request line and headers), counted as the bytes arrive, before
    they are parsed (431 beyond)."""
    max_headers: Annotated[int, msgspec.Meta(ge=1)] = 100
    """Most header lines in one request (431 beyond)."""
    header_timeout: PositiveFloat = 30.0
    """Seconds for a request head to arrive whole: from the connection's opening (one that sends
    nothing is then closed), or from its first bytes on a kept-alive connection (408)."""
    body_min_rate: Annotated[int, msgspec.Meta(ge=1)] = 1024
    """Slowest average rate, in bytes per second, at which a request body may arrive once
    `body_rate_grace` has passed since its head (408 and the connection closed below it). Time
    the gateway is not reading the body does not count against it."""
    body_rate_grace: PositiveFloat = 10.0
    """Seconds after a request's head before `body_min_rate` applies."""
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 2048
    """Most client connections per worker process; a connection beyond is closed at once (logged
    when the cap is reached and when it is left). Keep it below the file-descriptor limit
    (``ulimit -n``) less the upstream and Redis connections."""
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    """Worker processes sharing the port (uvicorn's supervisor); one per core is the usual
    choice. ``--workers`` overrides it. More than one needs a shared ``redis.url``."""
    drain_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    """After SIGTERM: readiness fails, no new connection is accepted, and requests in flight
    (streams included) get this long to finish before they are cut; then the usage ledger is
    written out (up to 10 s) and the process exits."""
    cors_origins: tuple[Annotated[str, msgspec.Meta(pattern=_ORIGIN)], ...] = ()
    """Web origins (``https://app.example.com``, no path) whose pages may call ``/v1/``
    from a browser, or ``*`` for any; none: no CORS headers at all (see ``cors.py``)."""


class LoggingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where and how the canonical request lines are written."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""
    format: Literal["json", "console"] = "json"
    """``json``: one object per line on stdout; ``console``: for people at a terminal."""


NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]


class RedisTlsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """TLS to Redis (and to Sentinel); the server's certificate is always verified."""

    ca_file: str | None = None
    """PEM file of the CA that signed the servers' certificates; default the system's CAs."""
    cert_file: str | None = None
    """Client certificate (PEM), for servers that require mutual TLS; with `key_file`."""
    key_file: str | None = None
    check_hostname: bool = True
    """Check the certificate names the host connected to (turn off only for servers reached
    by addresses their certificates do not list, as Cluster nodes announce IPs)."""


class RedisSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The shared state of every replica: keys, quotas, the usage ledger."""

    mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    """``standalone``: one Redis (or a proxy) at `url`; ``sentinel``: the primary that
    `sentinels` name `sentinel_master`, followed across failovers; ``cluster``: Redis Cluster,
    `url` being any one node (the others are discovered). Every key one script touches shares
    a hash tag, so each script runs on one node."""
    url: str | None = None
    """``redis://[user:password@]host:port/db`` or ``rediss://`` for TLS; ``embedded`` starts a
    private ``redis-server`` beside the gateway (demo and development only: nothing is shared
    and nothing outlives the process). Required while ``auth.enabled``, except in ``sentinel``
    mode: replicas that quietly kept quotas of their own would each allow the whole quota."""
    sentinels: tuple[str, ...] = ()
    """``host:port`` of each Sentinel (``sentinel`` mode)."""
    sentinel_master: str = "mymaster"
    """The name the Sentinels know the primary by."""
    db: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Database number in ``sentinel`` mode (`url` carries it otherwise; Cluster has only 0)."""
    username: str | None = None
    """ACL user; overrides one in `url`. Give it as ``${REDIS_USERNAME}``."""
    password: str | None = None
    """Password of the ACL user (or ``requirepass``); overrides one in `url`. Give it as
    ``${REDIS_PASSWORD}``: it is never logged."""
    sentinel_password: str | None = None
    """The Sentinels' own password (their ``requirepass``), when they require one."""
    tls: RedisTlsSettings | None = None
    """TLS settings; present, TLS is on (as it is with a ``rediss://`` url)."""
    timeout: PositiveFloat = 0.5
    """Seconds any one Redis command may take before it counts as failed."""
    on_failure: Literal["fail_closed", "fail_open"] = "fail_closed"
    """When Redis is unreachable: ``fail_closed`` answers 503 to every request that needs it;
    ``fail_open`` serves requests without enforcing quotas (keys looked up in the last
    hour still authenticate)."""
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 64
    """Connections per process; requests beyond wait for one (within `timeout`)."""
    breaker_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    """Consecutive failures that open the breaker: Redis is then not called at all..."""
    breaker_cooldown: PositiveFloat = 1.0
    """...for this many seconds, after which one request probes it again."""


class KeySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An API key declared in the configuration file by its hash (see `gateway keys hash`)."""

    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    """Safe to log; names the key in logs and usage."""
    hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    """SHA-256 (or, with a pepper, HMAC-SHA-256) of the key, 64 hex digits."""
    user: Annotated[str, msgspec.Meta(min_length=1)]
    team: str | None = None
    tier: str | None = None
    """Limits tier; default ``limits.default_tier``."""
    models: tuple[str, ...] | None = None
    """Models this key may use; all when absent."""


class SsoSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """OIDC tokens (JWT) from the organization's identity provider, as bearer credentials."""

    issuer: str
    """Expected ``iss``."""
    audience: str
    """Expected ``aud`` (one of, when the token lists several)."""
    jwks_url: str
    """Where the provider publishes its signing keys."""
    user_claim: str = "sub"
    """Claim holding the user id."""
    tier_claim: str | None = None
    """Claim (a string or a list, e.g. ``groups``) whose values pick the limits tier..."""
    tiers: dict[str, str] = msgspec.field(default_factory=dict)
    """...through this map of claim value → tier; the first listed match wins."""
    algorithms: tuple[Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"], ...] = (
        "RS256",
        "ES256",
    )
    leeway: Annotated[float, msgspec.Meta(ge=0, le=300)] = 30.0
    """Clock skew tolerated on ``exp``, ``nbf`` and ``iat``, in seconds."""
    jwks_cache_seconds: PositiveFloat = 300.0
    """How long fetched signing keys are trusted before they are fetched again."""


class AuthSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who may call: gateway-issued API keys, SSO tokens, the admin credential."""

    enabled: bool = True
    """``false`` serves everyone without a credential and without quotas (never in production)."""
    pepper: str | None = None
    """Server-side secret mixed into stored key hashes (HMAC-SHA-256); plain SHA-256 without."""
    admin_key: Annotated[str, msgspec.Meta(min_length=16)] | None = None
    """Credential of the ``/admin`` API (16 characters at least); the admin API is off when
    unset."""
    key_cache_seconds: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    """How long a replica reuses a key it looked up: the bound on how late it sees a revocation."""
    keys: tuple[KeySettings, ...] = ()
    """Bootstrap keys, by hash; they work even before anything is in Redis."""
    sso: SsoSettings | None = None


class QuotaLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A set of limits; an absent one is not enforced."""

    requests_per_minute: NonNegativeInt | None = None
    tokens_per_minute: NonNegativeInt | None = None
    tokens_per_day: NonNegativeInt | None = None
    """Calendar day, UTC."""
    concurrent_requests: NonNegativeInt | None = None


class TierSettings(QuotaLimits, frozen=True, forbid_unknown_fields=True):
    """The limits of one tier, and optionally tighter ones per model."""

    models: dict[str, QuotaLimits] = msgspec.field(default_factory=dict)


class LimitsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Quotas: tiers, the default tier and how tokens are reserved before they are known."""

    default_tier: str = "default"
    tiers: dict[str, TierSettings] = msgspec.field(
        default_factory=lambda: {"default": TierSettings()}
    )
    default_output_tokens: Annotated[int, msgspec.Meta(ge=1)] = 4096
    """Output tokens reserved for a request without ``max_output_tokens``."""
    concurrency_lease: Annotated[float, msgspec.Meta(ge=5)] = 60.0
    """Seconds a concurrency slot outlives a replica that died holding it; renewed while the
    request runs."""


class LedgerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The usage ledger: one record per request in a Redis Stream, and daily sums."""

    enabled: bool = True
    """``false`` writes no usage records (the benchmark's comparison; usage is then lost)."""

    retention_days: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """Records older than this are trimmed from the stream; daily sums expire after it too."""
    buffer_records: Annotated[int, msgspec.Meta(ge=100)] = 100_000
    """Records kept in memory while Redis cannot take them; beyond, the oldest batch (at most
    a quarter of this, or 256) is dropped, and every record dropped is logged."""
    dedupe_seconds: Annotated[int, msgspec.Meta(ge=60)] = 86_400
    """How long a written record's id is remembered, so that a retried write counts once."""
    checkpoint_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """How often a running stream's usage so far is saved in Redis: a replica killed
    mid-stream loses at most this much of a stream's usage."""
    orphan_seconds: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 30.0
    """A running stream not saved for this long belongs to a replica that died: another
    replica writes its record from the last save (``end: interrupted``)."""


class MetricsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Prometheus ``GET /metrics``."""

    enabled: bool = True
    """``false`` serves no ``/metrics`` and counts nothing (the benchmark's comparison)."""
    multiproc_dir: str | None = None
    """With several workers: the directory where each worker keeps its values for the others
    (emptied at start). Default: a new directory under ``$TMPDIR``, removed at exit."""


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the gateway reads from its configuration file."""

    providers: dict[str, ProviderSettings]
    models: tuple[ModelSettings, ...]
    server: ServerSettings = ServerSettings()
    logging: LoggingSettings = LoggingSettings()
    redis: RedisSettings = RedisSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitsSettings = LimitsSettings()
    ledger: LedgerSettings = LedgerSettings()
    metrics: MetricsSettings = MetricsSettings()
    source: str = "<built-in>"
    """Where these settings came from, for messages."""


def load_settings(path: str | Path, environ: dict[str, str] | None = None) -> Settings:
    """Read, expand and validate a configuration file."""
    path = Path(path)
    env = dict(os.environ) if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the configuration file is not UTF-8 text") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with `providers` and `models` at the top")
    raw = _expand(raw, env, path, "")
    raw["source"] = str(path)
    return settings_from_dict(raw, str(path))


def settings_from_dict(raw: dict[str, Any], source: str) -> Settings:
    """Validate an already expanded mapping; `source` names it in errors."""
    providers = raw.get("providers")
    if isinstance(providers, dict):
        # Checked one by one first: msgspec names a dict entry `[...]`, not by its key.
        for name, provider in providers.items():
            try:
                msgspec.convert(provider, ProviderSettings, strict=True)
            except msgspec.ValidationError as exc:
                raise ConfigError(_describe(source, str(exc), f"providers.{name}")) from exc
    try:
        settings = msgspec.convert(raw, Settings, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(source, str(exc))) from exc
    _check_references(settings, source)
    return settings


def _describe(source: str, message: str, prefix: str = "") -> str:
    match = _MSGSPEC_PATH.search(message)
    field = ""
    if match:
        message = message[: match.start()]
        field = match.group("path").lstrip(".")
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    message = message[0].lower() + message[1:]
    if message.startswith("invalid enum value"):
        allowed = _ENUMS.get(field.rsplit(".", 1)[-1])
        if allowed:
            message = f"expected one of {', '.join(allowed)}, got {message.split(' ', 3)[3]}"
    return f"{source}: {field or '(top level)'}: {message}"


def _check_references(settings: Settings, source: str) -> None:
    if not settings.models:
        raise ConfigError(f"{source}: models: expected at least one model")
    seen: set[str] = set()
    for index, model in enumerate(settings.models):
        if model.provider not in settings.providers:
            known = ", ".join(sorted(settings.providers)) or "none"
            raise ConfigError(
                f"{source}: models[{index}].provider: expected one of the keys under "
                f"`providers` ({known}), got `{model.provider}`"
            )
        if model.name in seen:
            raise ConfigError(f"{source}: models[{index}].name: `{model.name}` is listed twice")
        seen.add(model.name)
    for name, provider in settings.providers.items():
        for header, value in provider.headers.items():
            if not _HEADER_NAME.match(header) or "\r" in value or "\n" in value:
                raise ConfigError(
                    f"{source}: providers.{name}.headers.{header}: expected a header name "
                    "(letters, digits, -) and a value on one line"
                )
        _check_forward_headers(name, provider, source)
        url = provider.base_url
        if url != EMBEDDED and not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(
                f"{source}: providers.{name}.base_url: expected an http(s) URL or "
                f"`{EMBEDDED}`, got `{url}`"
            )
    _check_auth(settings, source)
    _check_redis(settings.redis, source)
    ledger = settings.ledger
    if ledger.orphan_seconds < 3 * ledger.checkpoint_seconds:
        raise ConfigError(
            f"{source}: ledger.orphan_seconds: expected at least 3 times ledger.checkpoint_seconds "
            f"({3 * ledger.checkpoint_seconds:g}), got {ledger.orphan_seconds:g}: a running "
            "stream would be taken for one whose replica died"
        )
    if ledger.dedupe_seconds < 10 * ledger.orphan_seconds:
        raise ConfigError(
            f"{source}: ledger.dedupe_seconds: expected at least 10 times ledger.orphan_seconds "
            f"({10 * ledger.orphan_seconds:g}), got {ledger.dedupe_seconds}: a stream's record "
            "and the one written from its save could then both count"
        )


def _check_forward_headers(name: str, provider: ProviderSettings, source: str) -> None:
    fixed = {header.lower() for header in provider.headers}
    for index, header in enumerate(provider.forward_headers):
        where = f"{source}: providers.{name}.forward_headers[{index}]"
        if not _HEADER_NAME.match(header):
            raise ConfigError(
                f"{where}: expected a header name (letters, digits, -), got `{header}`"
            )
        if not forwardable(header):
            raise ConfigError(
                f"{where}: `{header}` is never forwarded: the gateway sets it or withholds it "
                "(credentials, cookies, framing, client addresses)"
            )
        if header.lower() in fixed:
            raise ConfigError(
                f"{where}: `{header}` is also set in providers.{name}.headers, which replaces "
                "the client's: list it in one of them"
            )


def _check_auth(settings: Settings, source: str) -> None:
    tiers = settings.limits.tiers
    if settings.limits.default_tier not in tiers:
        raise ConfigError(
            f"{source}: limits.default_tier: expected one of the keys under `limits.tiers` "
            f"({', '.join(sorted(tiers)) or 'none'}), got `{settings.limits.default_tier}`"
        )
    named = [(f"auth.keys[{i}].tier", k.tier) for i, k in enumerate(settings.auth.keys)]
    if settings.auth.sso is not None:
        named += [(f"auth.sso.tiers.{g}", t) for g, t in settings.auth.sso.tiers.items()]
    for where, tier in named:
        if tier is not None and tier not in tiers:
            raise ConfigError(
                f"{source}: {where}: expected one of the keys under `limits.tiers` "
                f"({', '.join(sorted(tiers))}), got `{tier}`"
            )
    ids = [k.id for k in settings.auth.keys]
    for index, key_id in enumerate(ids):
        if key_id in ids[:index]:
            raise ConfigError(f"{source}: auth.keys[{index}].id: `{key_id}` is listed twice")
    url = settings.redis.url
    if url is None:
        if settings.auth.enabled and settings.redis.mode != "sentinel":
            raise ConfigError(
                f"{source}: redis.url: expected the URL of the Redis that keys and quotas live "
                f"in (redis://host:6379/0), or `{EMBEDDED}` for a private one (demo only), "
                "or auth.enabled: false"
            )
    elif url != EMBEDDED and not re.match(r"^(rediss?|unix)://", url):
        raise ConfigError(
            f"{source}: redis.url: expected a redis://, rediss:// or unix:// URL or "
            f"`{EMBEDDED}`, got `{_redact_url(url)}`"
        )
    elif url == EMBEDDED and settings.server.workers > 1:
        raise ConfigError(
            f"{source}: server.workers: expected 1 with redis.url `{EMBEDDED}` (each worker "
            f"would start a Redis of its own and keep quotas apart), got "
            f"{settings.server.workers}; give a shared redis.url for several workers"
        )


def _check_redis(redis: RedisSettings, source: str) -> None:
    if redis.mode == "sentinel":
        if not redis.sentinels:
            raise ConfigError(
                f"{source}: redis.sentinels: expected at least one `host:port` in sentinel mode"
            )
        if redis.url is not None:
            raise ConfigError(
                f"{source}: redis.url: expected none in sentinel mode (the Sentinels name the "
                "primary: set redis.sentinels, redis.sentinel_master and redis.db)"
            )
    for index, address in enumerate(redis.sentinels):
        if not re.match(r"^([^\s:/\[\]]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}$", address):
            raise ConfigError(
                f"{source}: redis.sentinels[{index}]: expected `host:port`, got `{address}`"
            )
    if redis.mode == "cluster" and redis.url is not None and not redis.url.startswith("redis"):
        raise ConfigError(
            f"{source}: redis.url: expected a node of the Redis Cluster (redis:// or "
            f"rediss://), got `{_redact_url(redis.url)}`"
        )
    tls = redis.tls
    if tls is not None:
        if redis.url is not None and redis.url.startswith("unix://"):
            raise ConfigError(f"{source}: redis.tls: expected none with a unix:// redis.url")
        if (tls.cert_file is None) != (tls.key_file is None):
            raise ConfigError(
                f"{source}: redis.tls: expected both cert_file and key_file, or neither"
            )
        for field in ("ca_file", "cert_file", "key_file"):
            name = getattr(tls, field)
            if name is not None and not (Path(name).is_file() and os.access(name, os.R_OK)):
                raise ConfigError(
                    f"{source}: redis.tls.{field}: expected a readable file, got `{name}`"
                )


def _redact_url(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def _expand(node: Any, env: dict[str, str], path: Path, where: str) -> Any:
    """Replace ${VAR} references in every string of the tree."""
    if isinstance(node, dict):
        return {
            k: _expand(v, env, path, f"{where}.{k}" if where else str(k)) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand(v, env, path, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{path}: {where}: expected the environment variable {name} to be set"
            )

        return _ENV_REF.sub(substitute, node)
    return node
