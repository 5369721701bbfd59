"""Demo user-service: users kept in memory, every answer names the instance that served it.

Run: ``python -m examples.user_service --port 8001 --instance user-service-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from examples.common import health, parse_args, serve
from examples.records import MemoryStore, add_collection_routes, answer, found_or_404

SERVICE = "user-service"


class NewUser(BaseModel):
    """The body of ``POST /users`` and ``PUT /users/{id}``."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    email: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]


@dataclass(frozen=True, slots=True)
class User:
    """A stored user."""

    id: int
    name: str
    email: str


def create_app(instance: str) -> FastAPI:
    """Build the user-service app for the instance named ``instance``."""
    store: MemoryStore[User] = MemoryStore()
    for name, email in (("Alice Smith", "alice@example.com"), ("Bob Jones", "bob@example.com")):
        store.add(partial(User, name=name, email=email))
    app = FastAPI(title=SERVICE, version="1.0.0")
    add_collection_routes(app, "user", store, instance)

    @app.post("/users", status_code=201)
    async def create_user(body: NewUser) -> dict[str, Any]:
        return answer(store.add(partial(User, name=body.name, email=body.email)), instance)

    @app.put("/users/{record_id}", response_model=None)
    async def replace_user(record_id: int, body: NewUser) -> dict[str, Any] | JSONResponse:
        user = store.replace(record_id, partial(User, name=body.name, email=body.email))
        return found_or_404(user, "user", record_id, instance)

    @app.get("/health")
    async def get_health() -> dict[str, str]:
        return health(SERVICE, instance)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve until stopped."""
    options = parse_args(SERVICE, 8001, argv)
    serve(create_app(options.instance), options)


if __name__ == "__main__":
    main()
