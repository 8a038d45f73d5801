"""The top level of a configuration file: `Settings`, the root of the settings tree."""

from __future__ import annotations

import msgspec

from .auth import AuthSettings
from .limits import LimitsSettings
from .redis import RedisSettings
from .schema import (
    LedgerSettings,
    LoggingSettings,
    MetricsSettings,
    ModelSettings,
    ProviderSettings,
    ServerSettings,
)


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the gateway reads from its configuration file."""

    providers: dict[str, ProviderSettings]
    """The upstream providers, by a name of your choosing."""
    models: tuple[ModelSettings, ...]
    """The models clients may ask for (at least one), each served by one provider."""
    server: ServerSettings = ServerSettings()
    """The listening socket and request limits."""
    logging: LoggingSettings = LoggingSettings()
    """Log level and format."""
    redis: RedisSettings = RedisSettings()
    """Where keys, quotas and usage live."""
    auth: AuthSettings = AuthSettings()
    """Credentials: API keys, SSO, the admin key."""
    limits: LimitsSettings = LimitsSettings()
    """Quotas by tier."""
    ledger: LedgerSettings = LedgerSettings()
    """Usage records."""
    metrics: MetricsSettings = MetricsSettings()
    """Prometheus metrics."""
    source: str = "<built-in>"
    """Not read from the file: the loader sets it to the file's path, which messages name."""
