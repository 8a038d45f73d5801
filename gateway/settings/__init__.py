"""Typed settings, loaded once from a YAML file; a bad file fails naming file, field and
expectation.

The structs are in `schema.py`, `redis.py`, `auth.py` and `limits.py`, the top level in
`root.py`; the loading in `loading.py`. `python -m gateway.settings.reference --write` writes
the configuration reference, ``docs/configuration.md``, from the fields' docstrings.
"""

from __future__ import annotations

from .auth import AuthSettings, KeySettings, SsoSettings
from .limits import LimitsSettings, QuotaLimits, TierSettings
from .loading import ConfigError, load_settings, settings_from_dict
from .redis import RedisSettings, RedisTlsSettings
from .root import Settings
from .schema import (
    EMBEDDED,
    DeploymentSettings,
    LedgerSettings,
    LoggingSettings,
    MetricsSettings,
    ModelSettings,
    ProviderSettings,
    ServerSettings,
)

__all__ = [
    "EMBEDDED",
    "AuthSettings",
    "ConfigError",
    "DeploymentSettings",
    "KeySettings",
    "LedgerSettings",
    "LimitsSettings",
    "LoggingSettings",
    "MetricsSettings",
    "ModelSettings",
    "ProviderSettings",
    "QuotaLimits",
    "RedisSettings",
    "RedisTlsSettings",
    "ServerSettings",
    "Settings",
    "SsoSettings",
    "TierSettings",
    "load_settings",
    "settings_from_dict",
]
