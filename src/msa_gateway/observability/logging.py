"""JSON logging for every line the process writes (stdlib logging + orjson).

``configure_logging`` installs one handler on the root logger (uvicorn's loggers included):
JSON lines by default, readable console lines with ``DEBUG=true``. Extra fields passed with
``logger.info("event", extra={...})`` become JSON keys; secrets are redacted by key name.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName", "color_message"}
)
SECRET_KEYS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization", "password", "token"})


def iso_now(ts: float | None = None) -> str:
    """Return an ISO 8601 UTC timestamp with milliseconds."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def redact(key: str, value: Any) -> Any:
    """Return ``value``, or a placeholder when ``key`` names a secret."""
    return "[redacted]" if key.lower() in SECRET_KEYS else value


class JSONFormatter(logging.Formatter):
    """Format a record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the JSON line for ``record``."""
        out: dict[str, Any] = {
            "timestamp": iso_now(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = redact(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """Readable lines for DEBUG=true: time, level, logger, event and the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return a readable line for ``record``."""
        extras = " ".join(
            f"{k}={redact(k, v)}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        base = f"{iso_now(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{base} {extras}" if extras else base
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(debug: bool = False, level: str = "info") -> None:
    """Send every logger's output through one JSON (or console) handler on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ConsoleFormatter() if debug else JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else getattr(logging, level.upper(), logging.INFO))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def uvicorn_log_config(debug: bool = False) -> dict[str, Any]:
    """Return a uvicorn ``log_config`` that routes its loggers to our root handler."""
    fmt = (
        "msa_gateway.observability.logging.ConsoleFormatter"
        if debug
        else ("msa_gateway.observability.logging.JSONFormatter")
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": fmt}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"handlers": ["default"], "level": "DEBUG" if debug else "INFO"},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
        },
    }
