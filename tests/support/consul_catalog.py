"""The catalog behind the Consul double: nodes, services, checks and a raft-like index.

Pure data and bookkeeping, run only on the double's event loop; the answers' JSON shapes follow
the "Health HTTP API" and "Catalog HTTP API" pages (see ``tests/support/consul_double.py``). Every
write is one raft entry: it bumps the datacenter's index, records it as the index of the services
it touched (and of the service list when that changed) and wakes blocked queries.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0
PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
STATUSES = frozenset({PASSING, WARNING, CRITICAL})
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Return seconds for a Go duration such as ``10s``, ``1m30s`` or ``1500ms``; raise ValueError."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"time: invalid duration {text!r}")
    return total


@dataclass(frozen=True, slots=True)
class AclPolicy:
    """What a token may do: read services/nodes, write (register) services."""

    service_read: bool = True
    service_write: bool = True


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the double received."""

    method: str
    path: str
    query: Mapping[str, str]
    token: str | None
    at: float


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    id: str
    address: str
    create_index: int
    modify_index: int
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Service:
    node: str
    id: str
    name: str
    port: Any
    address: str
    tags: tuple[str, ...]
    meta: Mapping[str, Any]
    weights: Mapping[str, Any]
    create_index: int
    modify_index: int
    enable_tag_override: bool = False


@dataclass(frozen=True, slots=True)
class Check:
    node: str
    id: str
    name: str
    status: str
    create_index: int
    modify_index: int
    service_id: str = ""
    service_name: str = ""
    service_tags: tuple[str, ...] = ()
    notes: str = ""
    output: str = ""
    type: str = ""
    http: str = ""
    method: str = "GET"
    interval: float = 0.0
    timeout: float = 10.0
    ttl: float = 0.0
    definition: Mapping[str, Any] = field(default_factory=dict)


def check_key(node: str, check_id: str) -> tuple[str, str]:
    return (node, check_id)


class Datacenter:
    """One datacenter's catalog, with a raft-like index that only the double's loop changes."""

    def __init__(self, name: str, node: str, address: str) -> None:
        self.name = name
        self.index = 10
        self.services_index = 10
        self.service_index: dict[str, int] = {}
        self.nodes: dict[str, Node] = {}
        self.services: dict[tuple[str, str], Service] = {}
        self.checks: dict[tuple[str, str], Check] = {}
        self.changed = asyncio.Event()
        self.generation = 0
        self.zero_index = False
        self.add_node(node, address)
        self.put_service(
            Service(node, "consul", "consul", 8300, "", (), {}, {"Passing": 1, "Warning": 1}, 0, 0), ()
        )

    # --- writes: each one is a raft entry that bumps the index and wakes blocked queries ---

    def _commit(self, services: set[str], catalog: bool) -> int:
        self.index += 1
        for s in services:
            self.service_index[s] = self.index
        if catalog:
            self.services_index = self.index
        self.wake()
        return self.index

    def add_node(self, name: str, address: str) -> None:
        idx = self.index + 1
        old = self.nodes.get(name)
        self.nodes[name] = Node(name, f"00000000-0000-4000-8000-{len(self.nodes):012d}", address, idx, idx)
        if old is None:
            self.checks[check_key(name, "serfHealth")] = Check(
                name,
                "serfHealth",
                "Serf Health Status",
                PASSING,
                idx,
                idx,
                output="Agent alive and reachable",
            )
        self._commit(self._services_on(name), catalog=False)

    def _services_on(self, node: str) -> set[str]:
        return {s.name for s in self.services.values() if s.node == node}

    def put_service(self, svc: Service, checks: Sequence[Check], replace_checks: bool = False) -> None:
        idx = self.index + 1
        key = (svc.node, svc.id)
        old = self.services.get(key)
        self.services[key] = replace(svc, create_index=old.create_index if old else idx, modify_index=idx)
        if replace_checks:
            for ck in [k for k, c in self.checks.items() if c.node == svc.node and c.service_id == svc.id]:
                del self.checks[ck]
        for c in checks:
            prev = self.checks.get(check_key(c.node, c.id))
            self.checks[check_key(c.node, c.id)] = replace(
                c, create_index=prev.create_index if prev else idx, modify_index=idx
            )
        names = {svc.name} | ({old.name} if old else set())
        self._commit(names, catalog=True)

    def drop_service(self, node: str, service_id: str) -> bool:
        svc = self.services.pop((node, service_id), None)
        if svc is None:
            return False
        for ck in [k for k, c in self.checks.items() if c.node == node and c.service_id == service_id]:
            del self.checks[ck]
        self._commit({svc.name}, catalog=True)
        return True

    def set_check(self, node: str, check_id: str, status: str, output: str) -> bool:
        """Set a check's status; return False when unknown. Unchanged status and output write nothing."""
        key = check_key(node, check_id)
        c = self.checks.get(key)
        if c is None:
            return False
        if c.status == status and c.output == output:
            return True
        self.checks[key] = replace(c, status=status, output=output, modify_index=self.index + 1)
        touched = self._services_on(node) if not c.service_id else {c.service_name}
        self._commit(touched, catalog=False)
        return True

    def restore_snapshot(self, index: int) -> None:
        """Act like a raft snapshot restore of older data: indexes drop to ``index``, blocked queries wake."""
        self.index = index
        self.services_index = min(self.services_index, index)
        self.service_index = {k: min(v, index) for k, v in self.service_index.items()}
        self.generation += 1
        self.wake()

    def wake(self) -> None:
        """Wake every blocked query (they re-check their index)."""
        self.changed.set()
        self.changed = asyncio.Event()

    # --- reads ---

    def catalog_index(self) -> int:
        return 0 if self.zero_index else self.services_index

    def health_index(self, service: str) -> int:
        if self.zero_index:
            return 0
        return self.service_index.get(service, self.services_index)

    def entries(self, service: str) -> list[tuple[Service, Node | None, list[Check]]]:
        out = []
        for (node, _sid), svc in sorted(self.services.items()):
            if svc.name != service:
                continue
            checks = [
                c
                for c in self.checks.values()
                if c.node == node and (c.service_id == "" or c.service_id == svc.id)
            ]
            out.append((svc, self.nodes.get(node), sorted(checks, key=lambda c: c.id)))
        return out


def node_json(n: Node, dc: str) -> dict[str, Any]:
    return {
        "ID": n.id,
        "Node": n.name,
        "Address": n.address,
        "Datacenter": dc,
        "TaggedAddresses": {"lan": n.address, "wan": n.address},
        "Meta": dict(n.meta),
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    }


def service_json(s: Service) -> dict[str, Any]:
    return {
        "ID": s.id,
        "Service": s.name,
        "Tags": list(s.tags),
        "Address": s.address,
        "Meta": dict(s.meta),
        "Port": s.port,
        "Weights": dict(s.weights),
        "EnableTagOverride": s.enable_tag_override,
        "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
        "Connect": {},
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    }


def check_json(c: Check) -> dict[str, Any]:
    return {
        "Node": c.node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status,
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": c.service_name,
        "ServiceTags": list(c.service_tags),
        "Type": c.type,
        "Definition": dict(c.definition),
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    }
