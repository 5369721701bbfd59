"""FastAPI routers for the gateway's own endpoints."""

from fastapi import APIRouter

admin_router: APIRouter | None = None
