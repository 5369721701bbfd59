"""What changed between the running registry and a discovered set: pure functions, no I/O.

A swap costs what changed, not what the registry holds: providers hand over unchanged services
as the very same tuple objects, so ``needs_rebuild`` answers most services with one identity
test, and only the services it names are rebuilt. Log lines carry counts and the first few ids
(``LOG_IDS``), never whole lists: one line per swap stays small at 20,000 instances.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from msa_gateway.model import Instance, ServiceOptions, ServiceSpec

LOG_IDS = 5  # ids a summary names; the rest are only counted


def needs_rebuild(spec: ServiceSpec | None, instances: tuple[Instance, ...], options: ServiceOptions) -> bool:
    """Return whether a service built from ``spec`` must be rebuilt for ``instances`` under ``options``.

    Identity first (the common case: nothing changed and the provider shared its tuple), then
    equality (a provider that builds new tuples, a reloaded config with equal options).
    """
    if spec is None:
        return True
    same_instances = spec.instances is instances or spec.instances == instances
    same_options = spec.options is options or spec.options == options
    return not (same_instances and same_options)


def removed_services(current: Iterable[str], discovered: Mapping[str, object]) -> list[str]:
    """Return the names in ``current`` that ``discovered`` no longer holds, in ``current``'s order."""
    return [name for name in current if name not in discovered]


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """Instance keys that came and went in one swap (of the rebuilt services only)."""

    added: tuple[str, ...]
    removed: tuple[str, ...]

    @classmethod
    def between(cls, before: Iterable[str], after: Iterable[str]) -> KeyChanges:
        """Return the keys in ``after`` but not ``before`` and the reverse, each in its input order."""
        old, new = list(before), list(after)
        old_set, new_set = set(old), set(new)
        return cls(
            added=tuple(k for k in new if k not in old_set),
            removed=tuple(k for k in old if k not in new_set),
        )
