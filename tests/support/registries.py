"""One face for the three registries the gateway discovers from, as end-to-end tests and the bench use them.

``Registry`` writes instances the way a service would (Redis registrar, etcd registrar, the
Consul agent API of the double), takes the registry down and up (a crash: Redis restarts empty,
etcd keeps its data dir, the Consul double keeps its catalog), writes bad entries, and runs a
heartbeating registration as a separate process (``msa-gateway register --heartbeat`` for Redis,
``etcdctl lease keep-alive`` for etcd) that a test can SIGKILL.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
import os
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from msa_gateway.discovery.codec import encode
from msa_gateway.discovery.etcd import EtcdClient, b64
from msa_gateway.discovery.etcd_registry import EtcdRegistrar
from msa_gateway.discovery.redis_registry import (
    DEFAULT_PREFIX,
    RedisRegistrar,
    events_channel,
    expiry_key,
    instances_key,
    services_key,
)
from msa_gateway.model import Instance
from msa_gateway.settings import Settings
from tests.support.consul_double import ConsulDouble
from tests.support.etcd_server import EtcdServer
from tests.support.procs import PY, REPO, find_binary, python_env
from tests.support.redis_server import RedisServer

ETCD_LEASE = 300  # seconds: instances registered "for good" in etcd live on a long lease


class Registry(abc.ABC):
    """A registry plus the writes and faults a discovery test needs."""

    kind: str

    @abc.abstractmethod
    def settings(self, **extra: Any) -> Settings:
        """Return gateway settings that discover from this registry."""

    @abc.abstractmethod
    def env(self) -> dict[str, str]:
        """Return the environment variables that make ``msa-gateway run`` discover from it."""

    @abc.abstractmethod
    async def register(self, service: str, instance: Instance) -> None:
        """Add or replace ``instance`` of ``service``, without expiry."""

    @abc.abstractmethod
    async def deregister(self, service: str, instance_id: str) -> None:
        """Remove an instance."""

    async def down(self) -> None:
        """Crash the registry (connections reset, new ones refused), in a thread: the loop keeps running."""
        await asyncio.to_thread(self._down)

    async def up(self) -> None:
        """Bring the registry back on the same address, in a thread: starting etcd waits for its health."""
        await asyncio.to_thread(self._up)

    @abc.abstractmethod
    def _down(self) -> None:
        """Crash the registry (blocking)."""

    @abc.abstractmethod
    def _up(self) -> None:
        """Start the registry again and wait until it answers (blocking)."""

    @abc.abstractmethod
    async def add_bad_entries(self, service: str) -> list[str]:
        """Write malformed JSON, a missing port and a port out of range; return what warnings must name."""

    def heartbeat_process(
        self, service: str, instance: Instance, ttl: float
    ) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        """Run a separate process that registers ``instance`` with ``ttl`` and keeps it alive."""
        raise NotImplementedError(f"{self.kind} has no heartbeat process")

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release clients."""


class RedisRegistry(Registry):
    """A real ``redis-server`` written through ``RedisRegistrar`` and ``msa-gateway register``."""

    kind = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.registrar = RedisRegistrar.from_settings(server.settings())

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, server: RedisServer) -> AsyncIterator[RedisRegistry]:
        """Yield a registry on ``server``; close clients afterwards."""
        reg = cls(server)
        try:
            yield reg
        finally:
            await reg.aclose()

    def settings(self, **extra: Any) -> Settings:
        return self.server.settings(service_discovery_type="redis", **extra)

    def env(self) -> dict[str, str]:
        return {
            "SERVICE_DISCOVERY_TYPE": "redis",
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(self.server.port),
        }

    async def register(self, service: str, instance: Instance) -> None:
        await self.registrar.register(service, instance, math.inf)

    async def deregister(self, service: str, instance_id: str) -> None:
        await self.registrar.deregister(service, instance_id)

    def _down(self) -> None:
        self.server.stop(kill=True)

    def _up(self) -> None:
        self.server.start()

    async def add_bad_entries(self, service: str) -> list[str]:
        ikey = instances_key(DEFAULT_PREFIX, service)
        async with Redis(host="127.0.0.1", port=self.server.port) as raw:
            await raw.sadd(services_key(DEFAULT_PREFIX), service)
            await raw.hset(
                ikey,
                mapping={
                    "bad-json": "{not json",
                    "bad-noport": '{"host": "127.0.0.1"}',
                    "bad-range": '{"host": "127.0.0.1", "port": 70000}',
                },
            )
            await raw.zadd(
                expiry_key(DEFAULT_PREFIX, service),
                {"bad-json": "+inf", "bad-noport": "+inf", "bad-range": "+inf"},
            )
            await raw.publish(events_channel(DEFAULT_PREFIX), b'{"op": "register"}')
        return [f"{ikey} field {field!r}" for field in ("bad-json", "bad-noport", "bad-range")]

    @contextlib.contextmanager
    def heartbeat_process(
        self, service: str, instance: Instance, ttl: float
    ) -> Iterator[subprocess.Popen[bytes]]:
        argv = [PY, "-m", "msa_gateway.cli", "register", service, "--host", instance.host]
        argv += ["--port", str(instance.port), "--id", instance.id, "--heartbeat", "--ttl", str(ttl)]
        env = python_env(**self.env())
        env.pop("REDIS_URL", None)
        with _logged_process(argv, env) as proc:
            yield proc

    async def aclose(self) -> None:
        await self.registrar.aclose()


class EtcdRegistry(Registry):
    """A real etcd (one per module) with a fresh key prefix per registry."""

    kind = "etcd"

    def __init__(self, server: EtcdServer) -> None:
        self.server = server
        self.prefix = f"/msa-test/{uuid.uuid4().hex[:8]}/"
        self.client = EtcdClient([server.url])
        self.registrar = EtcdRegistrar(EtcdClient([server.url]), self.prefix)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, server: EtcdServer) -> AsyncIterator[EtcdRegistry]:
        """Yield a registry on ``server``; make sure etcd runs again and close clients afterwards."""
        reg = cls(server)
        try:
            yield reg
        finally:
            if not server.running:
                server.start()
            await reg.aclose()

    def settings(self, **extra: Any) -> Settings:
        values: dict[str, Any] = {
            "service_discovery_type": "etcd",
            "etcd_endpoints": self.server.url,
            "etcd_prefix": self.prefix,
        }
        values.update(extra)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    def env(self) -> dict[str, str]:
        return {
            "SERVICE_DISCOVERY_TYPE": "etcd",
            "ETCD_ENDPOINTS": self.server.url,
            "ETCD_PREFIX": self.prefix,
        }

    async def register(self, service: str, instance: Instance) -> None:
        await self.registrar.register(service, instance, ETCD_LEASE)

    async def deregister(self, service: str, instance_id: str) -> None:
        await self.registrar.deregister(service, instance_id)

    def _down(self) -> None:
        self.server.kill()

    def _up(self) -> None:
        self.server.start()

    async def add_bad_entries(self, service: str) -> list[str]:
        bad = {
            "bad-json": b"{not json",
            "bad-noport": b'{"host": "127.0.0.1"}',
            "bad-range": b'{"host": "127.0.0.1", "port": 70000}',
        }
        keys = []
        for iid, value in bad.items():
            key = f"{self.prefix}{service}/{iid}"
            await self.client.call("/kv/put", {"key": b64(key), "value": b64(value)})
            keys.append(f"skipping key {key}")
        return keys

    @contextlib.contextmanager
    def heartbeat_process(
        self, service: str, instance: Instance, ttl: float
    ) -> Iterator[subprocess.Popen[bytes]]:
        etcdctl = [find_binary("etcdctl"), f"--endpoints={self.server.url}"]
        env = {**os.environ, "ETCDCTL_API": "3"}

        def run(*args: str) -> str:
            done = subprocess.run([*etcdctl, *args], env=env, check=True, capture_output=True, text=True)
            return done.stdout

        lease = run("lease", "grant", str(max(1, math.ceil(ttl)))).split()[1]
        key = f"{self.prefix}{service}/{instance.id}"
        run("put", f"--lease={lease}", key, encode(instance).decode())
        with _logged_process([*etcdctl, "lease", "keep-alive", lease], env) as proc:
            yield proc

    async def aclose(self) -> None:
        await self.registrar.aclose()
        await self.client.aclose()


class ConsulRegistry(Registry):
    """The Consul HTTP API double, written through its catalog the way an agent would."""

    kind = "consul"

    def __init__(self, double: ConsulDouble) -> None:
        self.double = double

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls) -> AsyncIterator[ConsulRegistry]:
        """Start a double for the block."""
        double = ConsulDouble().start()
        try:
            yield cls(double)
        finally:
            await asyncio.to_thread(double.close)

    def settings(self, **extra: Any) -> Settings:
        values: dict[str, Any] = {
            "service_discovery_type": "consul",
            "consul_host": "127.0.0.1",
            "consul_port": self.double.port,
        }
        values.update(extra)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    def env(self) -> dict[str, str]:
        return {
            "SERVICE_DISCOVERY_TYPE": "consul",
            "CONSUL_HOST": "127.0.0.1",
            "CONSUL_PORT": str(self.double.port),
        }

    async def register(self, service: str, instance: Instance) -> None:
        await asyncio.to_thread(
            self.double.register,
            service,
            instance.id,
            port=instance.port,
            address=instance.host,
            meta=dict(instance.metadata),
            weights={"Passing": instance.weight, "Warning": 1},
        )

    async def deregister(self, service: str, instance_id: str) -> None:
        await asyncio.to_thread(self.double.deregister, instance_id)

    def _down(self) -> None:
        self.double.go_down()

    def _up(self) -> None:
        self.double.come_back()

    async def add_bad_entries(self, service: str) -> list[str]:
        await asyncio.to_thread(self.double.register, service, "bad-noport", port=0, address="127.0.0.1")
        await asyncio.to_thread(self.double.register, service, "bad-range", port=70000, address="127.0.0.1")
        await asyncio.to_thread(self.double.register, service, "bad-port", port="x", address="127.0.0.1")
        return ["'bad-noport'", "'bad-range'", "'bad-port'"]

    async def aclose(self) -> None:
        """Nothing to release: the double is closed by ``running``."""


@contextlib.contextmanager
def _logged_process(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` with output in a temporary log; kill it afterwards; show the log if it died early."""
    with tempfile.TemporaryDirectory(prefix="hb-") as tmp:
        log = Path(tmp) / "process.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        except BaseException:
            if proc.poll() is not None:
                print(f"{argv[0]} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
