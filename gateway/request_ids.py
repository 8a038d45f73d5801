"""Request ids (every response carries one, and the upstream request too) and the other ids
the gateway makes: unique across replicas, told apart by their prefix."""

from __future__ import annotations

import itertools
import re
import secrets

from litestar.types import Scope

from .asgi import header

_CLIENT_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class RequestIds:
    """Request ids: the client's `x-request-id` when it is a sane token, else a new one.

    New ids are a random per-process prefix and a counter: unique across replicas without a
    system call per request.
    """

    def __init__(self, kind: str = "req") -> None:
        """`kind`: the prefix that says what the ids name (``req``, a request; ``rec``, a
        usage record)."""
        self._prefix = f"{kind}_{secrets.token_hex(8)}"
        self._counter = itertools.count(1)

    def for_scope(self, scope: Scope) -> str:
        """The id of the request in `scope`."""
        given = header(scope, b"x-request-id")
        if given is not None and _CLIENT_REQUEST_ID.match(given):
            return given.decode("ascii")
        return self.new()

    def new(self) -> str:
        """A fresh id."""
        return f"{self._prefix}{next(self._counter):08x}"
