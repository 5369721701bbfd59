"""Demo order-service: orders kept in memory, every answer names the instance that served it.

Run: ``python -m examples.order_service --port 8011 --instance order-service-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from examples.common import health, not_found, parse_args, serve

SERVICE = "order-service"


class NewOrder(BaseModel):
    """The body of ``POST /orders``."""

    user_id: Annotated[int, Field(ge=1)]
    product: Annotated[str, Field(min_length=1, max_length=200)]
    quantity: Annotated[int, Field(ge=1, le=10_000)] = 1


@dataclass(frozen=True, slots=True)
class Order:
    """A stored order."""

    id: int
    user_id: int
    product: str
    quantity: int
    status: str = "pending"


class OrderStore:
    """Orders of one instance, in memory, with increasing ids."""

    def __init__(self, seed: Sequence[tuple[int, str, int]] = ()) -> None:
        self._orders: dict[int, Order] = {}
        for user_id, product, quantity in seed:
            self.add(user_id, product, quantity)

    def add(self, user_id: int, product: str, quantity: int) -> Order:
        """Store a new order and return it."""
        order = Order(id=len(self._orders) + 1, user_id=user_id, product=product, quantity=quantity)
        self._orders[order.id] = order
        return order

    def get(self, order_id: int) -> Order | None:
        """Return the order with ``order_id``, or None."""
        return self._orders.get(order_id)

    def all(self) -> list[Order]:
        """Return every order, by id."""
        return list(self._orders.values())


def create_app(instance: str) -> FastAPI:
    """Build the order-service app for the instance named ``instance``."""
    store = OrderStore(seed=[(1, "Keyboard", 1), (2, "Monitor", 2)])
    app = FastAPI(title=SERVICE, version="1.0.0")

    @app.get("/orders")
    async def list_orders() -> dict[str, Any]:
        orders = store.all()
        return {"orders": [asdict(o) for o in orders], "count": len(orders), "instance": instance}

    @app.post("/orders", status_code=201)
    async def create_order(body: NewOrder) -> dict[str, Any]:
        order = store.add(body.user_id, body.product, body.quantity)
        return {**asdict(order), "instance": instance}

    @app.get("/orders/{order_id}", response_model=None)
    async def get_order(order_id: int) -> dict[str, Any] | JSONResponse:
        order = store.get(order_id)
        if order is None:
            return not_found("order", order_id, instance)
        return {**asdict(order), "instance": instance}

    @app.get("/health")
    async def get_health() -> dict[str, str]:
        return health(SERVICE, instance)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve until stopped."""
    options = parse_args(SERVICE, 8011, argv)
    serve(create_app(options.instance), options)


if __name__ == "__main__":
    main()
