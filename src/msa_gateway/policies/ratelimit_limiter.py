"""One policy's buckets across snapshots: the backend it decides with and what it does when that fails.

A ``Limiter`` lives in the runtime's ``SharedState`` under (service, config), so reloads and
discovery swaps keep the counts. ``decide(key)`` returns the decision and the metric's result:

    allowed / limited                   the configured backend decided
    fail_open / fail_closed             Redis is down and on_backend_error is allow / deny
    fallback_allowed / fallback_limited Redis is down, on_backend_error: local decided in-process

With ``sync_interval`` (redis only) decisions are taken on a local mirror of the buckets and
the admitted counts are sent to Redis in one script call per key every interval; Redis's state
comes back into the mirror. Gateways then overshoot by at most what the others admitted since
their last synchronisation (see the README for the measured figure).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

from msa_gateway.policies.gcra import Decision, LocalBuckets
from msa_gateway.policies.ratelimit_redis import RedisBackend, parse_answer, script_args

if TYPE_CHECKING:
    from collections.abc import Callable

    from msa_gateway.policies.ratelimit_config import RateLimitConfig
    from msa_gateway.tasks import Supervisor

MAX_KNOWN_KEYS = 4096  # packed script calls kept made (the recent clients'), then forgotten at once
SAFE = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:-_"


def redis_key_part(value: str) -> str:
    """Return ``value`` as it may appear in a Redis key: as is when short and plain, else its SHA-1."""
    raw = value.encode("utf-8", "surrogateescape")
    if len(raw) <= 64 and not raw.translate(None, SAFE):  # nothing left once the safe bytes go
        return value
    return "h:" + hashlib.sha1(raw, usedforsecurity=False).hexdigest()


class Limiter:
    """The buckets of one policy on one service, with its backend and failure mode."""

    def __init__(
        self,
        config: RateLimitConfig,
        service: str,
        redis: RedisBackend | None,
        now: Callable[[], float],
        tasks: Supervisor,
    ) -> None:
        self.config = config
        self.redis = redis
        self.now = now
        self.tasks = tasks
        self.local = LocalBuckets(config.limits, config.max_keys)
        self.prefix = f"rl:{{{service}:{config.name}:"
        self.suffixes = tuple(f"}}:{i}" for i in range(len(config.limits)))
        self.args = script_args(config.limits)
        self.pending: dict[str, int] = {}  # sync mode: admitted here, not yet sent to Redis
        self.commands: dict[str, bytes] = {}  # the packed script call of each recent key
        self.syncing = False

    def keys(self, key: str) -> list[str]:
        """Return the Redis keys of ``key``: one per limit, all with the same hash tag."""
        head = self.prefix + redis_key_part(key)
        return [head + suffix for suffix in self.suffixes]

    def command(self, key: str) -> bytes:
        """Return the script call deciding one request of ``key``, packed once per recent key.

        Its arguments never change (the policy's limits), so a request costs a dict lookup,
        not the packing (which formats each float argument through ``snprintf``).
        """
        known = self.commands.get(key)
        if known is not None:
            return known
        if len(self.commands) >= MAX_KNOWN_KEYS:
            self.commands.clear()
        assert self.redis is not None
        made = self.commands[key] = self.redis.command(self.keys(key), self.args)
        return made

    def decide_local(self, key: str) -> tuple[Decision, str]:
        """Return the ``local`` backend's decision (no coroutine: this is the whole cost)."""
        decision = self.local.decide(key, self.now())
        return decision, "allowed" if decision.allowed else "limited"

    async def decide(self, key: str) -> tuple[Decision | None, str]:
        """Return the decision for one request of ``key`` and its result label (None: no decision)."""
        redis = self.redis
        if redis is None:
            return self.decide_local(key)
        if self.config.sync_interval is not None and redis.up:
            return self._precheck(key)
        if redis.available():  # ``redis.run`` inline: one coroutine less on every decision
            command = self.command(key)
            reply = await redis.send(command)
            answer = reply if type(reply) is list and redis.up else await redis.settle(reply, command)
            return self.outcome(key, answer)
        return self._fallback(key)

    def outcome(self, key: str, answer: list[int] | None) -> tuple[Decision | None, str]:
        """Return the decision in Redis's ``answer``, or the failure mode's when there is none."""
        if answer is None:
            return self._fallback(key)
        decision = parse_answer(answer)
        return decision, "allowed" if decision.allowed else "limited"

    def _fallback(self, key: str) -> tuple[Decision | None, str]:
        mode = self.config.on_backend_error
        if mode == "allow":
            return None, "fail_open"
        if mode == "deny":
            return None, "fail_closed"
        decision = self.local.decide(key, self.now())
        return decision, "fallback_allowed" if decision.allowed else "fallback_limited"

    # --- sync mode: a local pre-check synchronised with Redis ----------------------------

    def _precheck(self, key: str) -> tuple[Decision | None, str]:
        decision = self.local.decide(key, self.now())
        if not decision.allowed:
            return decision, "limited"
        self.pending[key] = self.pending.get(key, 0) + 1
        if not self.syncing:
            self.syncing = True
            try:
                self.tasks.spawn("ratelimit_sync", self._sync_loop, key=self.prefix, restart=False)
            except RuntimeError:  # shutting down
                self.syncing = False
        return decision, "allowed"

    async def _sync_loop(self) -> None:
        """Send the pending counts every interval; end when a round has nothing to send."""
        interval = self.config.sync_interval
        assert interval is not None and self.redis is not None
        try:
            while self.pending:
                await asyncio.sleep(interval)
                batch, self.pending = self.pending, {}
                for key, count in batch.items():
                    if not await self._sync_one(key, count):
                        return
        finally:
            self.syncing = False

    async def _sync_one(self, key: str, count: int) -> bool:
        """Apply ``count`` admitted requests in Redis and take its state back; False when Redis failed."""
        assert self.redis is not None
        answer = await self.redis.run(self.keys(key), script_args(self.config.limits, count))
        if answer is None:
            return False
        state = parse_answer(answer)
        tats = self.local.tats.get(key)
        if tats is not None:
            now = self.now()
            for i, reset in enumerate(state.reset):
                tats[i] = max(tats[i], now + reset)
        return True
