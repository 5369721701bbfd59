"""The ``redis`` backend: one ``EVALSHA`` per decision, Redis's clock, and an explicit failure mode.

The script runs GCRA (``gcra.py``) on the policy's keys in one step, so gateways sharing a Redis
count every request exactly once, whatever the concurrency. Time comes from Redis ``TIME``
(microseconds), never from the gateways' clocks, which may disagree. The keys of one request
share a hash tag (``rl:{service:policy:key}:0``...), so the script also runs on Redis Cluster,
and each key gets a TTL that ends one interval after its TAT: an idle key is as good as gone.

When the script is missing (a restarted server, ``SCRIPT FLUSH``) the ``NOSCRIPT`` answer is
handled by loading it again and retrying those calls once. Any other failure, or no answer within
``backend_timeout`` (twice that when the event loop itself was late; the client's own socket
timeouts are longer, so this rule is the one that decides), marks the backend down:
the outage is logged once, ``gateway_ratelimit_backend_up`` goes to 0 and requests get the
policy's ``on_backend_error`` answer without waiting for Redis; every ``RETRY_INTERVAL`` one
request tries Redis again, and the first success brings the backend back (logged, gauge 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from msa_gateway.policies.gcra import Decision, Limit

log = logging.getLogger(__name__)

RETRY_INTERVAL = 0.25  # seconds between two tries of a backend that is down
MAX_BATCHES = 4  # pipelines in flight at once (about as many connections)
GRACE_TURNS = 3  # event-loop turns a timed-out call gets to read an answer already in the socket

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


Pending = tuple[Sequence[str], Sequence[float | int], "asyncio.Future[list[int] | None]"]


def script_args(limits: Sequence[Limit], applied: int = 0) -> list[float | int]:
    """Return ARGV for ``limits``: ``applied``, then interval and tolerance of each, in microseconds."""
    args: list[float | int] = [applied]
    for limit in limits:
        args += [limit.interval * 1e6, limit.tolerance * 1e6]
    return args


def parse_answer(answer: list[int]) -> Decision:
    """Turn the script's answer into a ``Decision``."""
    pairs = answer[2:]
    return Decision(
        bool(answer[0]),
        answer[1] / 1e6,
        tuple(int(r) for r in pairs[0::2]),
        tuple(r / 1e6 for r in pairs[1::2]),
    )


class RedisBackend:
    """One Redis client shared by every ``redis`` policy of the runtime, with its up/down state.

    Decisions asked for in the same event-loop turn go out together as one pipeline of
    ``EVALSHA`` calls (still one script run per request), with at most ``MAX_BATCHES`` pipelines
    in flight: a burst of concurrent requests costs a few round trips and connections, not one
    connection each, and each request waits for at most ``timeout``.
    """

    def __init__(
        self, client: Redis, timeout: float, now: Callable[[], float], on_change: Callable[[bool], None]
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.now = now
        self.on_change = on_change  # told of each transition (the gauge)
        self.up = True
        self.retry_at = 0.0
        self.sha: str | None = None
        self.queue: list[Pending] = []
        self.in_flight: set[asyncio.Task[None]] = set()
        self.scheduled = False

    def available(self) -> bool:
        """Return whether a decision should try Redis now (up, or down and due for a retry)."""
        if self.up:
            return True
        now = self.now()
        if now < self.retry_at:
            return False
        self.retry_at = now + RETRY_INTERVAL  # one request tries; the others keep the fallback
        return True

    async def run(self, keys: Sequence[str], args: Sequence[float | int]) -> list[int] | None:
        """Run the script; None when Redis failed or did not answer in time (the backend is down)."""
        future: asyncio.Future[list[int] | None] = asyncio.get_running_loop().create_future()
        self.queue.append((keys, args, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if not self.scheduled and len(self.in_flight) < MAX_BATCHES:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        if not self.queue:
            return
        batch, self.queue = self.queue, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self.in_flight.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if self.queue:
            self._schedule()

    async def _send(self, batch: list[Pending]) -> None:
        try:
            answers: list[list[int] | None] = list(await self._within_timeout(self._pipeline(batch)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark(False, exc)
            answers = [None] * len(batch)
            # Every pooled connection may be dead (a restarted server): start afresh, so the first
            # success after an outage is not followed by failures on the old connections.
            with contextlib.suppress(Exception):
                await self.client.connection_pool.disconnect()
        else:
            if not self.up:
                self._mark(True, None)
        for (_, _, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)

    async def _within_timeout(self, work: Coroutine[Any, Any, list[list[int]]]) -> list[list[int]]:
        """Await ``work`` for ``timeout``; once more when the timer itself fired late.

        A timer that fires more than half a timeout late means the event loop was starved of
        CPU, not that Redis was slow: its answer may be sitting unread in the socket. Then the
        work gets one more ``timeout`` before the backend is declared down. Either way the loop
        gets ``GRACE_TURNS`` more turns first: an answer that came while the loop was busy with
        other requests is read and parsed in those (microseconds), not counted as an outage.
        """
        loop = asyncio.get_running_loop()
        task = loop.create_task(work)
        try:
            deadline = loop.time() + self.timeout
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
            if not done and loop.time() - deadline > self.timeout / 2:
                await asyncio.wait({task}, timeout=self.timeout)
            for _ in range(GRACE_TURNS):
                if task.done():
                    break
                await asyncio.sleep(0)
            if not task.done():
                raise TimeoutError
            return task.result()
        finally:
            task.cancel()

    async def _pipeline(self, batch: list[Pending]) -> list[list[int]]:
        if self.sha is None:
            self.sha = str(await self.client.script_load(SCRIPT))
        results = await self._evalsha([(keys, args) for keys, args, _ in batch])
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:  # a restarted server or SCRIPT FLUSH: load it again, run those once more
            self.sha = str(await self.client.script_load(SCRIPT))
            again = await self._evalsha([(batch[i][0], batch[i][1]) for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _evalsha(self, calls: list[tuple[Sequence[str], Sequence[float | int]]]) -> list[Any]:
        assert self.sha is not None
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

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
        """Close the client's connections."""
        await self.client.aclose()
