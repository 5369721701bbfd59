"""FastAPI routers for the gateway's own endpoints."""

from fastapi import APIRouter

from msa_gateway.routers.admin import router as admin_router

__all__ = ["APIRouter", "admin_router"]
