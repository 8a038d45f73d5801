"""Redis, the shared state: connecting (standalone, Sentinel, Cluster), the timeout and
breaker every call goes through, script batching, the one place naming keys, the Lua
scripts (``lua/``), and the embedded redis-server."""

from __future__ import annotations

from .batch import Packed, ScriptBatcher, ScriptRefused, pack
from .embedded import EmbeddedRedis
from .keys import RedisKeys
from .store import RedisStore, RedisUnavailable

__all__ = [
    "EmbeddedRedis",
    "Packed",
    "RedisKeys",
    "RedisStore",
    "RedisUnavailable",
    "ScriptBatcher",
    "ScriptRefused",
    "pack",
]
