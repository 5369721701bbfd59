"""``uvicorn app.main:app`` (the original README's command) is ``uvicorn msa_gateway.main:app``."""

from msa_gateway.main import app

__all__ = ["app"]
