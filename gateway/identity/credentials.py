"""Where a caller's credential is read from: one of three headers, never the URL.

An API key or an SSO token (JWT) alike may come as ``Authorization: Bearer KEY`` (the OpenAI
SDKs), ``api-key: KEY`` (the AzureOpenAI SDKs) or ``x-api-key: KEY`` (Anthropic's SDKs and
many tools). Several of them may carry the same value (some clients set two); two different
values are a 400, for the gateway will not guess which one the caller meant, nor let a second
credential ride along unchecked. A credential in the query string is refused in any form
(whatever the parameter's name, once its value is a key, a token or ``Bearer …``): URLs end up
in proxy, browser and server logs.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

from litestar.types import Scope

from ..errors import AuthenticationFailed, InvalidRequest
from .keys import key_id_of
from .sso import looks_like_jwt

CREDENTIAL_HEADERS = frozenset({b"authorization", b"api-key", b"x-api-key"})
"""Request headers a caller's credential is taken from (and which are never forwarded)."""

# Parameter names that say "credential" whatever their value (lower case, `-` read as `_`).
_QUERY_NAMES = frozenset(
    {
        "api_key",
        "apikey",
        "x_api_key",
        "key",
        "access_token",
        "id_token",
        "token",
        "jwt",
        "auth",
        "authorization",
        "bearer",
    }
)
NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


def presented(scope: Scope) -> str:
    """The one credential the request carries: 401 without one, 400 with two different."""
    found: str | None = None
    for name, value in scope["headers"]:
        if name not in CREDENTIAL_HEADERS:
            continue
        credential = _credential(name, value.decode("latin-1"))
        if not credential:
            continue  # an empty header carries nothing to choose between
        if found is not None and credential != found:
            raise InvalidRequest(
                "The request carries two different credentials (among the Authorization, "
                "api-key and x-api-key headers): send one.",
                code="conflicting_credentials",
            )
        found = credential
    if found is None:
        raise AuthenticationFailed(NO_KEY)
    return found


def _credential(name: bytes, value: str) -> str:
    if name != b"authorization":
        return value.strip()
    scheme, _, credential = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthenticationFailed(NO_KEY)  # Basic, Digest, a bare key: not ours to read
    return credential.strip()


def refuse_query_credentials(scope: Scope, is_key: Callable[[str], bool]) -> None:
    """400 `credentials_in_query` when a query parameter is named like a credential or holds
    one: a gateway key, `sk-…`, `Bearer …`, a JWT, or a value `is_key` knows (a key
    configured by its hash)."""
    query = scope.get("query_string", b"")
    if not query:
        return
    # `;` separated parameters too, as some servers and proxies split on it.
    text = query.decode("latin-1").replace(";", "&")
    for name, value in parse_qsl(text, keep_blank_values=True):
        if _credential_like(name, value.strip(), is_key):
            raise InvalidRequest(
                "Credentials are not accepted in the URL: send them in the Authorization "
                "header (Authorization: Bearer YOUR_KEY).",
                code="credentials_in_query",
            )


def _credential_like(name: str, value: str, is_key: Callable[[str], bool]) -> bool:
    if name.strip().lower().replace("-", "_") in _QUERY_NAMES:
        return True
    if not value:
        return False
    return (
        value.lower().startswith(("sk-", "bearer "))
        or key_id_of(value) is not None
        or looks_like_jwt(value)
        or is_key(value)
    )
