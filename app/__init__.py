"""The seed's module path: ``uvicorn app.main:app`` from the repository root serves the gateway."""
