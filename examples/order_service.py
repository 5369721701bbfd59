"""Demo order-service: orders kept in memory, every answer names the instance that served it.

Run: ``python -m examples.order_service --port 8011 --instance order-service-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

from examples.common import health, parse_args, serve
from examples.records import MemoryStore, add_collection_routes, answer, found_or_404

SERVICE = "order-service"


class NewItem(BaseModel):
    """One line of an order: a product by id or by name (or both), and a quantity."""

    product_id: Annotated[int, Field(ge=1)] | None = None
    product: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    quantity: Annotated[int, Field(ge=1, le=10_000)] = 1

    @model_validator(mode="after")
    def _names_a_product(self) -> NewItem:
        if self.product_id is None and self.product is None:
            raise ValueError("an item needs product_id or product")
        return self


class NewOrder(BaseModel):
    """The body of ``POST /orders`` and ``PUT /orders/{id}``, in one of two forms.

    The original specification's ``{"user_id": 1, "items": [{"product_id": 1, "quantity": 2}]}``,
    or the short form ``{"user_id": 1, "product": "Laptop", "quantity": 1}`` for a one-item order.
    """

    user_id: Annotated[int, Field(ge=1)]
    items: Annotated[list[NewItem], Field(min_length=1, max_length=100)] | None = None
    product: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    quantity: Annotated[int, Field(ge=1, le=10_000)] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> NewOrder:
        if (self.items is None) == (self.product is None):
            raise ValueError("give either items or product (with an optional quantity), not both")
        if self.items is not None and self.quantity is not None:
            raise ValueError("quantity belongs in each item when items are given")
        return self

    def order_items(self) -> tuple[OrderItem, ...]:
        """Return the order's lines (the short form is one line)."""
        if self.items is None:
            return (OrderItem(product_id=None, product=self.product, quantity=self.quantity or 1),)
        return tuple(OrderItem(i.product_id, i.product, i.quantity) for i in self.items)


@dataclass(frozen=True, slots=True)
class OrderItem:
    """A stored order line."""

    product_id: int | None
    product: str | None
    quantity: int


@dataclass(frozen=True, slots=True)
class Order:
    """A stored order."""

    id: int
    user_id: int
    items: tuple[OrderItem, ...]
    status: str = "pending"


def create_app(instance: str) -> FastAPI:
    """Build the order-service app for the instance named ``instance``."""
    store: MemoryStore[Order] = MemoryStore()
    store.add(partial(Order, user_id=1, items=(OrderItem(product_id=1, product=None, quantity=2),)))
    store.add(partial(Order, user_id=2, items=(OrderItem(product_id=None, product="Monitor", quantity=1),)))
    app = FastAPI(title=SERVICE, version="1.0.0")
    add_collection_routes(app, "order", store, instance)

    @app.post("/orders", status_code=201)
    async def create_order(body: NewOrder) -> dict[str, Any]:
        return answer(store.add(partial(Order, user_id=body.user_id, items=body.order_items())), instance)

    @app.put("/orders/{record_id}", response_model=None)
    async def replace_order(record_id: int, body: NewOrder) -> dict[str, Any] | JSONResponse:
        order = store.replace(record_id, partial(Order, user_id=body.user_id, items=body.order_items()))
        return found_or_404(order, "order", record_id, instance)

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
