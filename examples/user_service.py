"""Demo user-service: users kept in memory, every answer names the instance that served it.

Run: ``python -m examples.user_service --port 8001 --instance user-service-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from examples.common import health, not_found, parse_args, serve

SERVICE = "user-service"


class NewUser(BaseModel):
    """The body of ``POST /users``."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    email: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]


@dataclass(frozen=True, slots=True)
class User:
    """A stored user."""

    id: int
    name: str
    email: str


class UserStore:
    """Users of one instance, in memory, with increasing ids."""

    def __init__(self, seed: Sequence[tuple[str, str]] = ()) -> None:
        self._users: dict[int, User] = {}
        for name, email in seed:
            self.add(name, email)

    def add(self, name: str, email: str) -> User:
        """Store a new user and return it."""
        user = User(id=len(self._users) + 1, name=name, email=email)
        self._users[user.id] = user
        return user

    def get(self, user_id: int) -> User | None:
        """Return the user with ``user_id``, or None."""
        return self._users.get(user_id)

    def all(self) -> list[User]:
        """Return every user, by id."""
        return list(self._users.values())


def create_app(instance: str) -> FastAPI:
    """Build the user-service app for the instance named ``instance``."""
    store = UserStore(seed=[("Alice Smith", "alice@example.com"), ("Bob Jones", "bob@example.com")])
    app = FastAPI(title=SERVICE, version="1.0.0")

    @app.get("/users")
    async def list_users() -> dict[str, Any]:
        users = store.all()
        return {"users": [asdict(u) for u in users], "count": len(users), "instance": instance}

    @app.post("/users", status_code=201)
    async def create_user(body: NewUser) -> dict[str, Any]:
        user = store.add(body.name, body.email)
        return {**asdict(user), "instance": instance}

    @app.get("/users/{user_id}", response_model=None)
    async def get_user(user_id: int) -> dict[str, Any] | JSONResponse:
        user = store.get(user_id)
        if user is None:
            return not_found("user", user_id, instance)
        return {**asdict(user), "instance": instance}

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
