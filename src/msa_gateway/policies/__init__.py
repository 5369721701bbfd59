"""Per-service policies."""
