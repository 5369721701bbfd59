"""The identity provider's keys (a JWKS), fetched without blocking the loop and cached by ``kid``.

One ``JwksCache`` per ``jwks_url`` (and tuning), kept in the runtime's ``SharedState`` so that
it outlives snapshots and every service that names the URL shares it. The request path only
reads a dict; fetches are on demand and coalesced: at most one is in flight (a supervised task
of the runtime), and every request that needs its result awaits the same event.

When fetches may start (``next_fetch``) is the one rule against hammering the provider:

- after a good fetch, not before ``refetch_interval`` has passed, so a storm of tokens with
  unknown ``kid`` values costs at most one fetch per interval;
- after a failed one, an exponential backoff (``refetch_interval`` doubling up to
  ``max_backoff``) while the last good keys stay in use;
- the keys are refreshed in the background once their TTL (``Cache-Control: max-age``, bounded
  by ``min_ttl``/``max_ttl``) has passed; requests keep using them meanwhile.

PyJWT's ``PyJWKClient`` is not used: it fetches with blocking ``urllib`` on the caller's thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import orjson

from msa_gateway.policies.jwt_keys import VerifyKey, from_jwk

if TYPE_CHECKING:
    from msa_gateway.policies.shared import SharedState

log = logging.getLogger("msa_gateway.policies.jwks")

MAX_JWKS_BYTES = 1024 * 1024
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d{1,10})", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|[,\s])(?:no-store|no-cache)(?:$|[,\s=])", re.IGNORECASE)


class JwksError(Exception):
    """A JWKS could not be fetched or held no usable key."""


@dataclass(frozen=True, slots=True)
class JwksSettings:
    """How a JWKS is cached and refetched (seconds)."""

    refetch_interval: float = 10.0
    default_ttl: float = 300.0
    min_ttl: float = 60.0
    max_ttl: float = 86400.0
    timeout: float = 5.0
    max_backoff: float = 300.0

    def __post_init__(self) -> None:
        for name in ("refetch_interval", "default_ttl", "min_ttl", "max_ttl", "timeout", "max_backoff"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_ttl < self.min_ttl:
            raise ValueError("max_ttl must be >= min_ttl")
        if self.max_backoff < self.refetch_interval:
            raise ValueError("max_backoff must be >= refetch_interval")

    def ttl(self, cache_control: str | None) -> float:
        """Return how long a response's keys stay fresh: its ``max-age`` (else the default), bounded."""
        ttl = self.default_ttl
        if cache_control:
            if _NO_CACHE.search(cache_control):
                ttl = self.min_ttl
            elif found := _MAX_AGE.search(cache_control):
                ttl = float(found.group(1))
        return min(self.max_ttl, max(self.min_ttl, ttl))

    def backoff(self, failures: int) -> float:
        """Return the pause after the ``failures``-th failed fetch in a row."""
        return min(self.max_backoff, self.refetch_interval * 2.0 ** min(failures - 1, 30))


class JwksCache:
    """The keys published at one URL, the last good set kept while the provider is down."""

    def __init__(self, url: str, settings: JwksSettings, shared: SharedState) -> None:
        self.url = url
        self.settings = settings
        self.shared = shared
        self.by_kid: dict[str, VerifyKey] = {}
        self.unnamed: tuple[VerifyKey, ...] = ()  # entries without a kid
        self.expires = -math.inf  # monotonic time the keys go stale
        self.next_fetch = -math.inf  # monotonic time before which no fetch starts
        self.failures = 0
        self.fetches = 0
        self._done: asyncio.Event | None = None  # set when the fetch in flight ends

    async def keys_for(self, kid: str | None) -> tuple[VerifyKey, ...]:
        """Return the keys a token with ``kid`` may be checked with (empty when none is known).

        A known ``kid`` answers at once (a stale set is refreshed in the background); an unknown
        one waits for a fetch when one may start or is in flight, else gets nothing.
        """
        now = self.shared.monotonic()
        if now >= self.expires:
            self._start(now)
        found = self._find(kid)
        if found:
            return found
        done = self._start(now)
        if done is None:
            return ()
        await done.wait()
        return self._find(kid)

    def _find(self, kid: str | None) -> tuple[VerifyKey, ...]:
        if kid is None:
            return self.unnamed or tuple(self.by_kid.values())
        key = self.by_kid.get(kid)
        return (key,) if key is not None else ()

    def _start(self, now: float) -> asyncio.Event | None:
        """Return the event of the fetch in flight, starting one when the rules allow; else None."""
        if self._done is not None:
            return self._done
        if now < self.next_fetch:
            return None
        done = asyncio.Event()
        try:
            entry = self.shared.tasks.spawn("jwks_fetch", self._fetch, key=self.url, restart=False)
        except RuntimeError:  # shutting down: the supervisor is closed
            return None
        self._done = done
        self.next_fetch = math.inf  # until the fetch ends
        assert entry.task is not None
        # Runs even when the task is cancelled before it started: no waiter is left hanging.
        entry.task.add_done_callback(lambda _: self._ended(done))
        return done

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            keys, ttl = await self._download()
        except (JwksError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._failed(exc)
        else:
            self._loaded(keys, ttl)

    def _ended(self, done: asyncio.Event) -> None:
        if self.next_fetch == math.inf:  # cancelled (shutdown): allow a fetch after the interval
            self.next_fetch = self.shared.monotonic() + self.settings.refetch_interval
        self._done = None
        done.set()

    async def _download(self) -> tuple[list[VerifyKey], float]:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.url, headers={"accept": "application/json"}, allow_redirects=False) as resp,
        ):
            if resp.status != 200:
                raise JwksError(f"HTTP status {resp.status}")
            body = await resp.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
            cache_control = resp.headers.get("cache-control")
        data = orjson.loads(body)
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise JwksError('no "keys" list')
        keys = [k for k in map(from_jwk, entries) if k is not None]
        if not keys:
            raise JwksError("no usable signing key")
        return keys, self.settings.ttl(cache_control)

    def _loaded(self, keys: list[VerifyKey], ttl: float) -> None:
        now = self.shared.monotonic()
        old = set(self.by_kid)
        self.by_kid = {k.kid: k for k in keys if k.kid is not None}
        self.unnamed = tuple(k for k in keys if k.kid is None)
        self.expires = now + ttl
        self.next_fetch = now + self.settings.refetch_interval
        if self.failures or old != set(self.by_kid):
            log.info(
                "JWKS loaded",
                extra={
                    "url": self.url,
                    "kids": sorted(self.by_kid),
                    "ttl": ttl,
                    "after_failures": self.failures,
                },
            )
        self.failures = 0

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        pause = self.settings.backoff(self.failures)
        self.next_fetch = self.shared.monotonic() + pause
        log.warning(
            "JWKS fetch failed; keeping the last good keys",
            extra={
                "url": self.url,
                "error": f"{exc.__class__.__name__}: {exc}",
                "failures": self.failures,
                "retry_in": pause,
                "kids": sorted(self.by_kid),
            },
        )
