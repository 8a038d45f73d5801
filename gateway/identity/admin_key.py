"""The admin credential: ``auth.admin_key``, presented as ``Authorization: Bearer``, guards
the admin API. Compared as digests in constant time."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from ..errors import AuthenticationFailed


def admin_guard(admin_key: str) -> Any:
    """A Litestar guard accepting only `Authorization: Bearer <admin_key>`."""
    expected = hashlib.sha256(admin_key.encode()).digest()

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _h: BaseRouteHandler) -> None:
        given = connection.headers.get("authorization", "")
        scheme, _, credential = given.partition(" ")
        digest = hashlib.sha256(credential.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, expected):
            raise AuthenticationFailed(
                "The admin API needs the admin credential: Authorization: Bearer ADMIN_KEY."
            )

    return guard
