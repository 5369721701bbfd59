"""The ``redis`` backend: one ``EVALSHA`` per decision, Redis's clock, and an explicit failure mode.

The script runs GCRA (``gcra.py``) on the policy's keys in one step, so gateways sharing a Redis
count every request exactly once, whatever the concurrency. Time comes from Redis ``TIME``
(microseconds), never from the gateways' clocks, which may disagree. The keys of one request
share a hash tag (``rl:{service:policy:key}:0``...), so the script also runs on Redis Cluster,
and each key gets a TTL that ends one interval after its TAT: an idle key is as good as gone.

Decisions go over one pipelined connection (``redis_wire.py``), which loads the script when it
opens; a ``NOSCRIPT`` answer (``SCRIPT FLUSH``) is handled by loading it again and retrying that
call once. Any other failure, or no answer within ``backend_timeout`` (twice that when the event
loop itself was late), marks the backend down:
the outage is logged once, ``gateway_ratelimit_backend_up`` goes to 0 and requests get the
policy's ``on_backend_error`` answer without waiting for Redis; every ``RETRY_INTERVAL`` one
request tries Redis again, and the first success brings the backend back (logged, gauge 1).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import hiredis
from redis.asyncio import Redis

from msa_gateway.policies.gcra import Decision, Limit
from msa_gateway.policies.redis_wire import Endpoint, Reply, Wire, open_wire, pack

log = logging.getLogger(__name__)

RETRY_INTERVAL = 0.25  # seconds between two tries of a backend that is down

# KEYS: one per limit. ARGV: applied, then per limit the interval and the tolerance in microseconds.
# applied = 0 decides one request; applied = n > 0 accounts for n requests a pre-check already
# admitted (never refused). Answers {allowed, wait_us, remaining_1, reset_us_1, remaining_2, ...}.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local applied = tonumber(ARGV[1])
local cost = applied > 0 and applied or 1
local wait, cur, new, out = 0, {}, {}, {}
for i = 1, #KEYS do
  local interval, tolerance = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  local base = tat
  if tat + interval <= now then base = now end
  cur[i], new[i] = math.max(tat, now), base + interval * cost
  local allow_at = new[i] - tolerance
  if applied == 0 and allow_at > now + 1 then wait = math.max(wait, allow_at - now) end
end
local allowed = wait == 0
for i = 1, #KEYS do
  local interval, tolerance = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tat = cur[i]
  if allowed then
    tat = new[i]
    redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.ceil((tat + interval - now) / 1000))
  end
  out[#out + 1] = math.max(0, math.floor((now + tolerance - tat) / interval + 0.000001))
  out[#out + 1] = math.max(0, math.ceil(tat - now))
end
return {allowed and 1 or 0, math.ceil(wait), unpack(out)}
"""


def script_args(limits: Sequence[Limit], applied: int = 0) -> list[float | int]:
    """Return ARGV for ``limits``: ``applied``, then interval and tolerance of each, in microseconds."""
    args: list[float | int] = [applied]
    for limit in limits:
        args += [limit.interval * 1e6, limit.tolerance * 1e6]
    return args


Args = Sequence[float | int]  # the script's ARGV
_new = tuple.__new__  # builds a Decision in C (its constructor is Python)


def parse_answer(answer: list[int]) -> Decision:
    """Turn the script's answer into a ``Decision``."""
    if len(answer) == 4:  # one limit: no loops
        allowed, wait, remaining, reset = answer
        return _new(Decision, (allowed == 1, wait / 1e6, (remaining,), (reset / 1e6,)))
    pairs = answer[2:]
    return Decision(
        bool(answer[0]),
        answer[1] / 1e6,
        tuple(int(r) for r in pairs[0::2]),
        tuple(r / 1e6 for r in pairs[1::2]),
    )


class RedisBackend:
    """The rate limiter's Redis: one pipelined connection (``redis_wire.py``) and its up/down state.

    Decisions asked for in the same event-loop turn leave in one write, still one ``EVALSHA``
    each; every request waits for at most ``timeout`` (see ``Wire`` for the starved-loop grace).
    ``client`` (redis-py) names the server and serves maintenance commands, never decisions.
    """

    def __init__(
        self, client: Redis, timeout: float, now: Callable[[], float], on_change: Callable[[bool], None]
    ) -> None:
        self.client = client
        self.endpoint = Endpoint.of(client)
        self.timeout = timeout
        self.now = now
        self.on_change = on_change  # told of each transition (the gauge)
        self.up = True
        self.retry_at = 0.0
        self.sha = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()  # = SCRIPT LOAD
        self.load = pack("SCRIPT", "LOAD", SCRIPT)
        self.wire: Wire | None = None
        self.opening: asyncio.Task[Wire | None] | None = None

    def available(self) -> bool:
        """Return whether a decision should try Redis now (up, or down and due for a retry)."""
        if self.up:
            return True
        now = self.now()
        if now < self.retry_at:
            return False
        self.retry_at = now + RETRY_INTERVAL  # one request tries; the others keep the fallback
        return True

    async def run(self, keys: Sequence[str], args: Args) -> list[int] | None:
        """Run the script; None when Redis failed or did not answer in time (the backend is down)."""
        command = self.command(keys, args)
        reply = await self.send(command)
        return reply if type(reply) is list and self.up else await self.settle(reply, command)

    def command(self, keys: Sequence[str], args: Args) -> bytes:
        """Return the script call on ``keys`` with ``args``, packed (the same bytes every time: keep it)."""
        return pack("EVALSHA", self.sha, len(keys), *keys, *args)

    def send(self, command: bytes) -> Awaitable[Reply]:
        """Send a packed script call and return its reply to come: ``run`` in two halves, for a caller
        that saves a coroutine on the common path (the answer, while up) and ``settle``s the rest."""
        wire = self.wire
        if wire is None or wire.failed is not None:
            return self._send_connected(command)
        return wire.send(command)

    async def _send_connected(self, command: bytes) -> Reply:
        wire = await self._open()
        if wire is None:
            return ConnectionError("no connection to Redis")
        return await wire.send(command)

    async def settle(self, reply: Reply, command: bytes) -> list[int] | None:
        """Return the script's answer from a reply that was not plainly one; None when Redis failed.

        ``NOSCRIPT`` (``SCRIPT FLUSH``): load the script again, then run it (in that order, on one
        connection). A failed connection has failed itself (``Wire.fail``); the next try opens one.
        """
        wire = self.wire
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT") and wire is not None:
            wire.send(self.load)
            reply = await wire.send(command)
        if isinstance(reply, BaseException):
            self._mark(False, reply)
            return None
        if not self.up:
            self._mark(True, None)
        return reply  # type: ignore[no-any-return]  # the script answers a list of integers

    async def _open(self) -> Wire | None:
        """Connect, once for every caller waiting (a cancelled caller does not cancel the others)."""
        if self.opening is None:
            loop = asyncio.get_running_loop()
            self.opening = loop.create_task(self._connect(), name="ratelimit-redis-connect")
        return await asyncio.shield(self.opening)

    async def _connect(self) -> Wire | None:
        try:
            wire = await open_wire(self.endpoint, self.timeout, self.load)
        except Exception as exc:  # refused, timed out, TLS, AUTH or SELECT refused: all an outage
            self._mark(False, exc)
            return None
        finally:
            self.opening = None
        self.wire = wire
        return wire

    def _mark(self, up: bool, exc: BaseException | None) -> None:
        if up == self.up:
            self.retry_at = self.now() + RETRY_INTERVAL
            return
        self.up = up
        self.retry_at = self.now() + RETRY_INTERVAL
        if up:
            log.warning("ratelimit_backend_recovered", extra={"backend": "redis"})
        else:
            reason = type(exc).__name__ if exc is not None else "unknown"
            log.error("ratelimit_backend_down", extra={"backend": "redis", "reason": reason})
        self.on_change(up)

    async def aclose(self) -> None:
        """Close the connection and the client's."""
        if self.wire is not None:
            self.wire.fail(ConnectionError("closed"))
        await self.client.aclose()
