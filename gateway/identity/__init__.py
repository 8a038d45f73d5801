"""Who is calling: gateway-issued API keys, SSO tokens (JWT), where a credential is read
from, and the admin credential."""

from __future__ import annotations

from .admin_key import admin_guard
from .authenticator import Authenticator, Identity
from .keys import KeyHasher, KeyRecord, KeyStore

__all__ = [
    "Authenticator",
    "Identity",
    "KeyHasher",
    "KeyRecord",
    "KeyStore",
    "admin_guard",
]
