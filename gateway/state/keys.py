"""The one place that names Redis keys.

Every key starts with the configured prefix (default ``gw``) and carries a hash tag: all the keys
one Lua script touches share it, so every script runs on Redis Cluster without CROSSSLOT errors.

=====================================  =======  ===========================================
key                                    type     holds
=====================================  =======  ===========================================
``gw:key:{<key id>}``                  hash     one API key's record (its hash, owner, ...)
``gw:keys``                            set      every key id, for listing
``gw:rl:{u:<user tag>}:override``      hash     admin overrides of a user's limits
``gw:rl:{u:<user tag>}:pending``       hash     what each unsettled admission reserved
``gw:rl:{u:<user tag>}:<scope>:req``   zset     admitted requests in the last minute
``gw:rl:{u:<user tag>}:<scope>:tok``   zset     token reservations in the last minute
``gw:rl:{u:<user tag>}:<scope>:amt``   hash     their amounts, and their sum (``_sum``)
``gw:rl:{u:<user tag>}:<scope>:day``   hash     tokens used on the current UTC day
``gw:rl:{u:<user tag>}:<scope>:conc``  zset     concurrency slots, scored by lease expiry
``gw:{ledger}:stream``                 stream   usage records: an entry per batch of them
``gw:{ledger}:applied``                hash     each writer's last applied batch number
``gw:{ledger}:seen:<record id>``       string   a saved stream's record, written (idempotency)
``gw:{ledger}:users:<YYYY-MM-DD>``     set      the users with records of the day
``gw:{ledger}:user:<user tag>:<YYYY-MM>``  hash  a user's sums of the month, by day and model
``gw:{ledger}:running``                hash     the usage so far of streams still running
``gw:{ledger}:running:saved``          zset     when each was last saved (orphans: long ago)
``gw:{ledger}:writers[:since]``        hash     each writer's last sign of life; since when
=====================================  =======  ===========================================

The user tag is a digest of the user id: user ids come from identity providers and may hold
``{``, ``}`` or ``:``, which must not reach a key name, let alone its hash tag.
"""

from __future__ import annotations

import hashlib

LIMITER_SUFFIXES = ("req", "tok", "amt", "day", "conc")
"""The keys of one limiter scope, in the order the Lua scripts take them."""


class RedisKeys:
    """Builds every Redis key name the gateway uses."""

    __slots__ = ("_digests", "_prefix")

    def __init__(self, prefix: str = "gw") -> None:
        self._prefix = prefix
        self._digests: dict[str, str] = {}
        """Users' digests: every request of a user needs its own a few times."""

    def _digest(self, user: str) -> str:
        digest = self._digests.get(user)
        if digest is None:
            if len(self._digests) >= _DIGESTS_KEPT:
                self._digests.clear()
            digest = self._digests[user] = _digest(user)
        return digest

    def key_record(self, key_id: str) -> str:
        """The record of API key `key_id`."""
        return f"{self._prefix}:key:{{{key_id}}}"

    def key_index(self) -> str:
        """The set of every key id."""
        return f"{self._prefix}:keys"

    def user_tag(self, user: str) -> str:
        """The hash tag shared by every limiter key of `user`."""
        return f"{{u:{self._digest(user)}}}"

    def user_override(self, user: str) -> str:
        """Admin overrides of `user`'s limits."""
        return f"{self._prefix}:rl:{self.user_tag(user)}:override"

    def pending(self, user: str) -> str:
        """What each of `user`'s admissions not yet settled reserved."""
        return f"{self._prefix}:rl:{self.user_tag(user)}:pending"

    def limiter(self, user: str) -> list[str]:
        """The keys every limiter script of `user` starts with: override, pending."""
        return [self.user_override(user), self.pending(user)]

    def ledger(self) -> list[str]:
        """The keys `lua/ledger_append.lua` takes first: the stream, the running streams'
        saves, and the writers' last applied batch numbers."""
        return [self.ledger_stream(), *self.ledger_running(), self.ledger_applied()]

    def ledger_applied(self) -> str:
        """Each ledger writer's last applied batch number."""
        return f"{self._prefix}:{{ledger}}:applied"

    def ledger_seen(self, record_id: str) -> str:
        """The marker of a record written (only records two writers may write have one)."""
        return f"{self._prefix}:{{ledger}}:seen:{record_id}"

    def ledger_running(self) -> list[str]:
        """The usage so far of running streams (hash), and when each was saved (zset)."""
        base = f"{self._prefix}:{{ledger}}"
        return [f"{base}:running", f"{base}:running:saved"]

    def ledger_writers(self) -> list[str]:
        """Each ledger writer's last sign of life, and since when it is in touch (hashes)."""
        base = f"{self._prefix}:{{ledger}}"
        return [f"{base}:writers", f"{base}:writers:since"]

    def ledger_stream(self) -> str:
        """The usage ledger."""
        return f"{self._prefix}:{{ledger}}:stream"

    def ledger_users(self, day: str) -> str:
        """The users with records of `day` (``YYYY-MM-DD``)."""
        return f"{self._prefix}:{{ledger}}:users:{day}"

    def ledger_user_month(self, user: str, month: str) -> str:
        """`user`'s sums of `month` (``YYYY-MM``): fields ``YYYY-MM-DD TAB model TAB measure``."""
        return f"{self._prefix}:{{ledger}}:user:{self._digest(user)}:{month}"

    def scope(self, user: str, scope: str) -> tuple[str, ...]:
        """The keys of one limiter scope of `user`, in `LIMITER_SUFFIXES` order."""
        base = f"{self._prefix}:rl:{self.user_tag(user)}:{scope}"
        return tuple(f"{base}:{suffix}" for suffix in LIMITER_SUFFIXES)


_DIGESTS_KEPT = 100_000


def _digest(user: str) -> str:
    return hashlib.blake2b(user.encode(), digest_size=10).hexdigest()
