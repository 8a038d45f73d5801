"""Typed settings, loaded once from a YAML file; a bad file fails naming file, field and
expectation."""

from __future__ import annotations

from .schema import (
    EMBEDDED,
    AuthSettings,
    ConfigError,
    LedgerSettings,
    LimitsSettings,
    LoggingSettings,
    ProviderSettings,
    QuotaLimits,
    RedisSettings,
    ServerSettings,
    Settings,
    SsoSettings,
    TierSettings,
    load_settings,
    settings_from_dict,
)

__all__ = [
    "EMBEDDED",
    "AuthSettings",
    "ConfigError",
    "LedgerSettings",
    "LimitsSettings",
    "LoggingSettings",
    "ProviderSettings",
    "QuotaLimits",
    "RedisSettings",
    "ServerSettings",
    "Settings",
    "SsoSettings",
    "TierSettings",
    "load_settings",
    "settings_from_dict",
]
