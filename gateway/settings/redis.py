"""The ``redis`` section: where the shared state lives, and what happens when it is away."""

from __future__ import annotations

from typing import Literal

import msgspec

from .schema import NonNegativeInt, PositiveFloat, PositiveInt


class RedisTlsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """TLS to Redis (and to Sentinel); the server's certificate is always verified."""

    ca_file: str | None = None
    """PEM file of the CA that signed the servers' certificates; default the system's CAs."""
    cert_file: str | None = None
    """Client certificate (PEM), for servers that require mutual TLS; with `key_file`."""
    key_file: str | None = None
    """Private key (PEM) of `cert_file`; the two are given together or not at all."""
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
    """``redis://[user:password@]host:port/db``, ``rediss://`` for TLS or ``unix://`` for a
    socket; ``embedded`` starts a private ``redis-server`` beside the gateway (demo and
    development only: nothing is shared and nothing outlives the process). Required while
    ``auth.enabled``, except in ``sentinel`` mode (where it must be absent): replicas that
    quietly kept quotas of their own would each allow the whole quota."""
    sentinels: tuple[str, ...] = ()
    """``host:port`` of each Sentinel (``sentinel`` mode; at least one there)."""
    sentinel_master: str = "mymaster"
    """The name the Sentinels know the primary by."""
    db: NonNegativeInt = 0
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
    """Seconds any one Redis call may take, waiting for a connection included, before it
    counts as failed."""
    on_failure: Literal["fail_closed", "fail_open"] = "fail_closed"
    """When Redis is unreachable: ``fail_closed`` answers 503 to every request that needs it
    (and ``/readyz`` fails); ``fail_open`` serves requests without enforcing quotas, and keys
    this replica looked up in the last hour still authenticate (as ``auth.keys`` always do)."""
    max_connections: PositiveInt = 64
    """Connections per process; requests beyond wait for one (within `timeout`)."""
    breaker_failures: PositiveInt = 5
    """Consecutive failed calls that open the circuit breaker: Redis is then not called at all
    for `breaker_cooldown` seconds, and a request needing it meets `on_failure` at once
    instead of after a timeout."""
    breaker_cooldown: PositiveFloat = 1.0
    """Seconds the open breaker waits before one call (a request's or a readiness probe's)
    tries Redis again; its success closes the breaker."""
