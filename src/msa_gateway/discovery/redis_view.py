"""The Redis provider's table of services, updated one service at a time (pure: no I/O).

Reads come back per service (``redis.py``'s scripts): either the whole content of a service
(its hash and zset) or only a digest of it that matches what the table holds. The table turns
content into instances, keeps the previous tuple object when a service's instances did not
change (so later steps compare by identity), tracks when the next live instance of each
service expires, and reports bad entries once per service. ``discovered()`` is the complete
snapshot the provider protocol asks for: a shallow copy, unchanged services shared.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from msa_gateway.discovery import codec
from msa_gateway.discovery.codec import valid_host, valid_port, validate_instance_id
from msa_gateway.discovery.redis_registry import expiry_key, instances_key, services_key
from msa_gateway.model import Instance
from msa_gateway.settings import validate_service_name

log = logging.getLogger("msa_gateway.discovery.redis")

SOURCE = "redis"


def parse_legacy(instance_id: str, raw: str) -> Instance:
    """Parse a ``"host:port"`` value of the original layout; raise ``ValueError`` if it is not one."""
    text = raw.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected 'host:port', got {text!r}")
    return Instance(id=instance_id, host=valid_host(host), port=valid_port(int(port)), source=SOURCE)


def _id(instance_id: str) -> str:
    why = validate_instance_id(instance_id)
    if why:
        raise ValueError(f"instance id {instance_id!r}: {why}")
    return instance_id


def pairs(flat: object) -> list[tuple[str, str]]:
    """Pair up a flat ``[k1, v1, k2, v2]`` reply (an empty Lua table arrives as ``{}``)."""
    if not isinstance(flat, list):
        return []
    return list(zip(flat[::2], flat[1::2], strict=True))


def score(text: object) -> float | None:
    """Return a score the scripts sent as text (``false``/missing: None)."""
    return float(text) if isinstance(text, str) and text else None


@dataclass(frozen=True, slots=True)
class ServiceRead:
    """One service as one script call saw it.

    ``digest`` is None when the keys have the wrong type; ``fields``/``scores`` are None when
    the script left the content out because the digest matched the one the table holds.
    """

    name: str
    digest: str | None
    next_expiry_ms: float | None  # the lowest score of a live instance (inf: never)
    last_expiry_ms: float | None  # the highest finite score of a live instance
    fields: Mapping[str, str] | None = None
    scores: Mapping[str, float] | None = None


def parse_row(row: Sequence[object]) -> ServiceRead:
    """Parse one ``[name, digest, lo, hi, fields?, scores?]`` row of a script answer."""
    name, digest, lo, hi = str(row[0]), row[1], row[2], row[3]
    fields = scores = None
    if len(row) > 4:
        fields = dict(pairs(row[4]))
        scores = {member: float(value) for member, value in pairs(row[5])}
    return ServiceRead(
        name, digest if isinstance(digest, str) else None, score(lo), score(hi), fields, scores
    )


def decode_service(prefix: str, read: ServiceRead, now_ms: float) -> tuple[dict[str, Instance], list[str]]:
    """Turn a service's content into its live instances by id, and the problems of bad entries."""
    key = instances_key(prefix, read.name)
    found: dict[str, Instance] = {}
    problems: list[str] = []
    scores = read.scores or {}
    for raw_id, raw in (read.fields or {}).items():
        expiry = scores.get(raw_id)
        if expiry is not None and expiry <= now_ms:
            continue  # expired: not yet purged by a registrar, but gone
        try:
            instance_id = _id(raw_id)
            if expiry is None:
                raise ValueError(f"no expiry entry in {expiry_key(prefix, read.name)}")
            found[instance_id] = codec.decode(raw, source=SOURCE, instance_id=instance_id)
        except ValueError as exc:
            problems.append(f"{key} field {raw_id!r}: {exc}")
    return found, problems


@dataclass(slots=True)
class _Service:
    digest: str | None = None
    instances: dict[str, Instance] | None = None
    legacy: dict[str, Instance] | None = None
    problems: frozenset[str] = frozenset()
    legacy_problems: frozenset[str] = frozenset()
    shadowed: frozenset[str] = frozenset()
    next_expiry_ms: float | None = None


class RedisView:
    """Every service the provider knows, with the instances of both layouts merged."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._services: dict[str, _Service] = {}
        self._view: dict[str, tuple[Instance, ...]] = {}
        self._expiries: list[tuple[float, str]] = []  # a heap; stale entries are skipped
        self._bad_legacy: frozenset[str] = frozenset()  # original-layout keys with unusable names
        self.longest_ttl_ms: float | None = None  # the longest remaining lifetime of an instance seen

    # --- what the provider asks -------------------------------------------------------

    def digest(self, name: str) -> str:
        """Return the digest held for ``name`` ('' when none: the script then sends the content)."""
        entry = self._services.get(name)
        return entry.digest or "" if entry is not None else ""

    def size(self, name: str) -> int:
        """Return how many instances ``name`` has in the view (0 when none)."""
        return len(self._view.get(name, ()))

    def discovered(self) -> dict[str, tuple[Instance, ...]]:
        """Return every service with live instances (a new dict; unchanged tuples are shared)."""
        return dict(self._view)

    def next_expiry_ms(self) -> float | None:
        """Return the earliest finite expiry of a live instance, if any."""
        heap = self._expiries
        while heap:
            at, name = heap[0]
            entry = self._services.get(name)
            if entry is not None and entry.next_expiry_ms == at:
                return at
            heapq.heappop(heap)
        return None

    def due(self, now_ms: float) -> list[str]:
        """Return the services whose next expiry has passed at ``now_ms``."""
        heap, out = self._expiries, []
        while (at := self.next_expiry_ms()) is not None and at <= now_ms:
            out.append(heapq.heappop(heap)[1])
        return out

    # --- what the reads bring -----------------------------------------------------------

    def apply(self, reads: Iterable[ServiceRead], now_ms: float) -> tuple[bool, list[str]]:
        """Take the rows of one script call; return (anything changed, names whose content is stale).

        A row without content whose digest differs from the one held names a service to read
        in full (the scan scripts send digests only).
        """
        changed, stale = False, []
        for read in reads:
            entry = self._services.get(read.name)
            if entry is None:
                entry = self._services[read.name] = _Service()
            self._note_expiry(read, entry, now_ms)
            if read.fields is None and read.digest is not None:
                if read.digest != entry.digest:
                    stale.append(read.name)
                continue
            entry.digest = read.digest
            if read.digest is None:
                found: dict[str, Instance] = {}
                problems = [f"{instances_key(self.prefix, read.name)}: wrong type (want a hash and a zset)"]
            else:
                found, problems = self._decode(read, now_ms)
            _report(problems, entry.problems)
            entry.problems = frozenset(problems)
            entry.instances = found
            changed |= self._rebuild(read.name, entry)
        return changed, stale

    def drop_missing(self, present: set[str]) -> bool:
        """Forget current-layout services not in ``present`` (the services set); return whether any went."""
        changed = False
        for name in [n for n, e in self._services.items() if n not in present and e.instances is not None]:
            entry = self._services[name]
            entry.instances, entry.digest, entry.next_expiry_ms = None, None, None
            changed |= self._rebuild(name, entry)
        return changed

    def apply_legacy(self, hashes: Mapping[str, Mapping[str, str]]) -> bool:
        """Take every original-layout hash (``service:{name}`` -> fields); return whether any changed."""
        seen: set[str] = set()
        changed = False
        bad = [f"{k}: {why}" for k in hashes if (why := validate_service_name(k.removeprefix("service:")))]
        _report(bad, self._bad_legacy)
        self._bad_legacy = frozenset(bad)
        for key, fields in hashes.items():
            name = key.removeprefix("service:")
            if validate_service_name(name):
                continue
            seen.add(name)
            entry = self._services.setdefault(name, _Service())
            legacy: dict[str, Instance] = {}
            problems = []
            for raw_id, raw in fields.items():
                try:
                    legacy[raw_id] = parse_legacy(_id(raw_id), raw)
                except ValueError as exc:
                    problems.append(f"{key} field {raw_id!r}: {exc}")
            _report(problems, entry.legacy_problems)
            entry.legacy_problems = frozenset(problems)
            if legacy != entry.legacy:
                entry.legacy = legacy or None
                changed |= self._rebuild(name, entry)
        for name in [n for n, e in self._services.items() if e.legacy is not None and n not in seen]:
            self._services[name].legacy = None
            changed |= self._rebuild(name, self._services[name])
        return changed

    # --- inside -------------------------------------------------------------------------

    def _decode(self, read: ServiceRead, now_ms: float) -> tuple[dict[str, Instance], list[str]]:
        why = validate_service_name(read.name)
        if why:
            return {}, [f"{services_key(self.prefix)} member {read.name!r}: {why}"]
        return decode_service(self.prefix, read, now_ms)

    def _note_expiry(self, read: ServiceRead, entry: _Service, now_ms: float) -> None:
        lo, hi = read.next_expiry_ms, read.last_expiry_ms
        entry.next_expiry_ms = lo if lo is not None and math.isfinite(lo) else None
        if entry.next_expiry_ms is not None:
            heapq.heappush(self._expiries, (entry.next_expiry_ms, read.name))
            if len(self._expiries) > 4 * len(self._services) + 64:  # drop the stale entries
                self._expiries = [
                    (e.next_expiry_ms, n) for n, e in self._services.items() if e.next_expiry_ms is not None
                ]
                heapq.heapify(self._expiries)
        if hi is not None and math.isfinite(hi):
            self.longest_ttl_ms = max(self.longest_ttl_ms or 0.0, hi - now_ms)

    def _rebuild(self, name: str, entry: _Service) -> bool:
        """Recompute ``name``'s merged tuple; keep the old object when equal; return whether it changed."""
        merged: dict[str, Instance] = dict(entry.legacy or {})
        shadowed = [
            f"service:{name} field {iid!r}: shadowed by {instances_key(self.prefix, name)}"
            for iid in sorted(merged.keys() & (entry.instances or {}).keys())
        ]
        _report(shadowed, entry.shadowed)
        entry.shadowed = frozenset(shadowed)
        merged.update(entry.instances or {})
        new = tuple(merged[i] for i in sorted(merged))
        if entry.instances is None and entry.legacy is None and entry.digest is None:
            del self._services[name]
        if self._view.get(name, ()) == new:
            return False
        if new:
            self._view[name] = new
        else:
            del self._view[name]
        return True


def _report(problems: list[str], before: frozenset[str]) -> None:
    """Warn about each problem not already reported by the previous read of the same keys."""
    for problem in problems:
        if problem not in before:
            log.warning("redis discovery: skipping %s", problem)
