"""The hand-packed EVALSHA calls: the same bytes redis-py would send, and only what Redis can
take."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection

from gateway.state.batch import Packed, evalsha, pack

SHA = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"


def test_packed_calls_are_what_redis_py_sends() -> None:
    """`evalsha(pack(...))` gives the bytes of redis-py's own EVALSHA, for every kind of value."""
    keys = ["gw:{ledger}:stream", "gw:rl:{u:é}:user:req"]
    args: list[Any] = ["", 0, -1, 12345678901234, 0.5, 1e-7, b"\x00\r\n{json}", "tab\there"]
    expected = b"".join(Connection().pack_command("EVALSHA", SHA, len(keys), *keys, *args))
    packed = Packed(len(keys), len(keys) + len(args), pack(keys) + pack(args), keys[0])
    assert evalsha(SHA, packed) == expected


@pytest.mark.parametrize("bad", [True, None, [1], {"a": 1}])
def test_values_redis_cannot_take_are_refused(bad: Any) -> None:
    """Booleans, None, lists and dicts are a TypeError, not some string Redis would store."""
    with pytest.raises(TypeError):
        pack(["k", bad])
