"""In-memory records for the demo services: a store with increasing ids and the routes every collection has.

Both services keep their data per instance (no shared database), so that which instance served a
request stays visible; ``add_collection_routes`` gives each the same list, get and delete endpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, asdict
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from examples.common import not_found


class Record(Protocol):
    """A stored record: a dataclass with an integer ``id``."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @property
    def id(self) -> int: ...


R = TypeVar("R", bound=Record)


class MemoryStore(Generic[R]):
    """Records of one instance, in memory; ids increase and are never reused, also after a delete."""

    def __init__(self) -> None:
        self._records: dict[int, R] = {}
        self._next_id = 1

    def add(self, build: Callable[[int], R]) -> R:
        """Store ``build(new_id)`` and return it."""
        record = build(self._next_id)
        self._next_id += 1
        self._records[record.id] = record
        return record

    def replace(self, record_id: int, build: Callable[[int], R]) -> R | None:
        """Store ``build(record_id)`` in place of the record ``record_id``; None when there is none."""
        if record_id not in self._records:
            return None
        record = self._records[record_id] = build(record_id)
        return record

    def get(self, record_id: int) -> R | None:
        """Return the record with ``record_id``, or None."""
        return self._records.get(record_id)

    def delete(self, record_id: int) -> R | None:
        """Remove the record with ``record_id`` and return it, or None when there is none."""
        return self._records.pop(record_id, None)

    def all(self) -> list[R]:
        """Return every record, by id."""
        return list(self._records.values())


def answer(record: Record, instance: str) -> dict[str, Any]:
    """Return the JSON body for ``record``, naming the instance that served it."""
    return {**asdict(record), "instance": instance}


def found_or_404(
    record: Record | None, kind: str, record_id: int, instance: str
) -> dict[str, Any] | JSONResponse:
    """Return ``record``'s body, or the 404 JSON answer when it is None."""
    if record is None:
        return not_found(kind, record_id, instance)
    return answer(record, instance)


def add_collection_routes(app: FastAPI, kind: str, store: MemoryStore[Any], instance: str) -> None:
    """Add ``GET /{kind}s``, ``GET /{kind}s/{id}`` and ``DELETE /{kind}s/{id}`` (200, the removed record)."""
    plural = f"{kind}s"

    async def list_all() -> dict[str, Any]:
        records = store.all()
        return {plural: [asdict(r) for r in records], "count": len(records), "instance": instance}

    async def get_one(record_id: int) -> dict[str, Any] | JSONResponse:
        return found_or_404(store.get(record_id), kind, record_id, instance)

    async def delete_one(record_id: int) -> dict[str, Any] | JSONResponse:
        return found_or_404(store.delete(record_id), kind, record_id, instance)

    app.add_api_route(f"/{plural}", list_all, methods=["GET"])
    app.add_api_route(f"/{plural}/{{record_id}}", get_one, methods=["GET"], response_model=None)
    app.add_api_route(f"/{plural}/{{record_id}}", delete_one, methods=["DELETE"], response_model=None)
