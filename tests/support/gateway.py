"""Run the gateway for a test: in this event loop on a real socket, or as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from msa_gateway.app import GatewayApp
from msa_gateway.discovery.base import Provider
from msa_gateway.observability.access import AccessLog
from msa_gateway.protocol import ServerLimits
from msa_gateway.runtime import Runtime
from msa_gateway.server import uvicorn_config
from msa_gateway.settings import Settings, parse_config
from tests.support.procs import PY, REPO, free_port, listens_on, python_env, wait_port


def service_yaml(services: dict[str, list[int]], **options: Any) -> dict[str, Any]:
    """Return a config dict registering ``services`` (name -> ports on 127.0.0.1) with ``options``.

    Active health checks are off unless ``health_check`` is given, so recorders see only proxied requests.
    """
    options.setdefault("health_check", {"path": None})
    return {
        "services": {
            name: {"instances": [{"host": "127.0.0.1", "port": p} for p in ports], **options}
            for name, ports in services.items()
        }
    }


class InProcessGateway:
    """A gateway served by uvicorn inside the test's event loop."""

    def __init__(self, app: GatewayApp, server: uvicorn.Server, port: int, access: io.StringIO) -> None:
        self.app = app
        self.server = server
        self.port = port
        self.access_stream = access

    @property
    def url(self) -> str:
        """Return the gateway's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def runtime(self) -> Runtime:
        """Return the running runtime."""
        assert self.app.runtime is not None
        return self.app.runtime

    def access_lines(self) -> list[str]:
        """Return the access log lines written so far."""
        return [line for line in self.access_stream.getvalue().splitlines() if line]


@contextlib.asynccontextmanager
async def serve_gateway(
    config: dict[str, Any],
    *,
    provider: Provider | None = None,
    settings: Settings | None = None,
    runtime_hook: Callable[[Runtime], None] | None = None,
) -> AsyncIterator[InProcessGateway]:
    """Serve a gateway for ``config`` (a parsed YAML dict) on a free port until the block ends."""
    settings = settings or Settings(_env_file=None)  # type: ignore[call-arg]
    cfg = parse_config(config, "test.yaml")
    access = io.StringIO()

    def factory() -> Runtime:
        rt = Runtime(settings, cfg, provider=provider, access=AccessLog(access))
        if runtime_hook is not None:
            runtime_hook(rt)
        return rt

    app = GatewayApp(settings, cfg, runtime_factory=factory)
    port = free_port()
    server = uvicorn.Server(
        uvicorn_config(app, "127.0.0.1", port, ServerLimits(), lifespan="on", log_config=None)
    )
    task = asyncio.create_task(server.serve(), name="test-gateway")
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("gateway exited before starting")
            await asyncio.sleep(0.01)
        yield InProcessGateway(app, server, port, access)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


class GatewayProcess:
    """``msa-gateway run`` (or ``argv``, ``{port}`` filled in) as a real process, stdout captured to a file."""

    def __init__(
        self, config: dict[str, Any] | None = None, argv: list[str] | None = None, **env: str
    ) -> None:
        self.argv = argv or ["-m", "msa_gateway.cli", "run"]
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="gw-")
        self.log = Path(self._dir.name) / "gateway.log"
        self.config_path = Path(self._dir.name) / "gateway.yaml"
        if config is not None:
            self.config_path.write_text(yaml.safe_dump(config))
        self.env = python_env(
            HOST="127.0.0.1",
            PORT=str(self.port),
            **({"GATEWAY_CONFIG": str(self.config_path)} if config is not None else {}),
            **env,
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the gateway's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> GatewayProcess:
        """Start the process unless it runs already (and wait until it listens)."""
        if self.proc is None or self.proc.poll() is not None:
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    [PY, *(a.replace("{port}", str(self.port)) for a in self.argv)],
                    env=self.env,
                    cwd=REPO,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        if wait:
            try:
                wait_port(self.port, timeout=20, proc=self.proc)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"gateway did not start: {exc}\n{self.output()[-3000:]}") from exc
            if not listens_on(self.proc.pid, self.port):  # another process answers on the port
                raise RuntimeError(f"port {self.port} is another process's\n{self.output()[-3000:]}")
        return self

    def output(self) -> str:
        """Return everything the process printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def pid(self) -> int:
        """Return the process id."""
        assert self.proc is not None
        return self.proc.pid

    def terminate(self, timeout: float = 40.0) -> int:
        """Send SIGTERM and return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Kill the process if still running and remove its files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._dir.cleanup()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def gateway_process(config: dict[str, Any] | None = None, **env: str) -> Iterator[GatewayProcess]:
    """Run ``msa-gateway run`` for the duration of the block."""
    gw = GatewayProcess(config, None, **env)
    try:
        yield gw.start()
    finally:
        gw.close()


async def raw_request(port: int, data: bytes, *, read_timeout: float = 10.0) -> bytes:
    """Send ``data`` as-is to 127.0.0.1:``port`` and return everything until the server closes or goes idle."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), read_timeout)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if _complete(b"".join(chunks)):
                break
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _complete(data: bytes) -> bool:
    while data.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in data:
        data = data.partition(b"\r\n\r\n")[2]
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lower = head.lower()
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    if b"transfer-encoding: chunked" in lower:
        return body.endswith(b"0\r\n\r\n")
    return b" 204 " in head.split(b"\r\n")[0] or b" 304 " in head.split(b"\r\n")[0]


def parse_response(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Split a raw HTTP/1.1 response into status, headers (lower-case names) and de-chunked body."""
    while data.startswith(b"HTTP/1.1 1"):  # interim responses (100 Continue)
        data = data.partition(b"\r\n\r\n")[2]
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers.append((k.strip().lower(), v.strip()))
    if (b"transfer-encoding", b"chunked") in headers:
        out = bytearray()
        rest = body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2 :]
        body = bytes(out)
    return status, headers, body


__all__ = [
    "GatewayProcess",
    "InProcessGateway",
    "gateway_process",
    "parse_response",
    "raw_request",
    "serve_gateway",
    "service_yaml",
]
