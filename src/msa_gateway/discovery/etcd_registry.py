"""Register service instances in etcd, where ``EtcdProvider`` finds them.

Key layout (``ETCD_PREFIX`` defaults to ``/msa-gateway/services/``; a missing final ``/`` is added)::

    key:   {prefix}{service}/{instance_id}      e.g. /msa-gateway/services/orders/orders-1
    value: JSON object, UTF-8
           {"host": "10.0.0.5",          required: host name or IP, no scheme, no port
            "port": 8001,                required: integer 1-65535
            "weight": 1,                 optional: integer 1-1000, default 1
            "health_path": "/health",    optional: path to probe; absent/null = the service's default
            "metadata": {"zone": "a"}}   optional: string values (numbers/booleans become strings)
    lease: one lease per instance; the key disappears when the lease expires

``service`` is 1-128 characters of letters, digits, ``.``, ``_``, ``~``, ``-`` and not a gateway
endpoint name (``health``, ``metrics``, ``services``, ...); ``instance_id`` is 1-256 characters
without whitespace, control characters or ``/``; the value follows the rules of ``codec`` (the
same as Redis, the YAML file and the admin API). Unknown JSON fields are ignored; a bad key or
value is skipped by the gateway with a warning naming the key. Any change is seen by every
gateway within a second.

From any language, with ``etcdctl`` 3.4+ (older: ``export ETCDCTL_API=3``; add ``--endpoints=URL``)::

    # register with a 10 s lease, then keep it alive (keep-alive runs until interrupted)
    LEASE=$(etcdctl lease grant 10 | awk '{print $2}')
    etcdctl put --lease=$LEASE /msa-gateway/services/orders/orders-1 \\
        '{"host":"10.0.0.5","port":8001,"weight":1,"metadata":{"version":"1.4"}}'
    etcdctl lease keep-alive $LEASE            # or: etcdctl lease keep-alive --once $LEASE
    # deregister
    etcdctl del /msa-gateway/services/orders/orders-1
    etcdctl lease revoke $LEASE
    # list what the gateway sees
    etcdctl get --prefix /msa-gateway/services/

Over plain HTTP (etcd 3.4+ JSON gateway; keys and values are base64): ``POST /v3/lease/grant``
``{"TTL": 10}``, ``POST /v3/kv/put`` ``{"key": b64(key), "value": b64(json), "lease": ID}``,
``POST /v3/lease/keepalive`` ``{"ID": ID}`` every TTL/3 seconds, ``POST /v3/kv/deleterange``
``{"key": b64(key)}``.
"""

from __future__ import annotations

import math

from msa_gateway.discovery import codec
from msa_gateway.discovery.codec import check_ttl
from msa_gateway.discovery.etcd import (
    EtcdApiError,
    EtcdClient,
    b64,
    normalize_prefix,
    parse_endpoints,
    parse_key,
)
from msa_gateway.model import Instance
from msa_gateway.settings import Settings

GRPC_NOT_FOUND = 5


class EtcdRegistrar:
    """Write instances under ``{prefix}{service}/{id}`` on a lease of ``ttl`` seconds each."""

    def __init__(self, client: EtcdClient, prefix: str) -> None:
        self._client = client
        self.prefix = normalize_prefix(prefix)
        self._leases: dict[str, int] = {}  # key -> lease this registrar granted

    @classmethod
    def from_settings(cls, settings: Settings) -> EtcdRegistrar:
        """Build from ``ETCD_ENDPOINTS`` and ``ETCD_PREFIX``."""
        return cls(EtcdClient(parse_endpoints(settings.etcd_endpoints)), settings.etcd_prefix)

    def key(self, service: str, instance_id: str) -> str:
        """Return the etcd key of an instance; raise ValueError for a bad service name or id."""
        key = f"{self.prefix}{service}/{instance_id}"
        parse_key(key, self.prefix)
        return key

    async def register(self, service: str, instance: Instance, ttl: float) -> None:
        """Put ``instance`` on a new lease of ``ttl`` seconds (rounded up, at least 1); ``inf``: no lease."""
        instance = codec.normalize(instance)
        key = self.key(service, instance.id)
        lease = 0
        if not math.isinf(check_ttl(ttl)):
            grant = await self._client.call("/lease/grant", {"TTL": max(1, math.ceil(ttl))})
            lease = int(grant["ID"])
        put: dict[str, object] = {"key": b64(key), "value": b64(codec.encode(instance))}
        if lease:
            put["lease"] = lease
        await self._client.call("/kv/put", put)
        old = self._leases.pop(key, None)
        if lease:
            self._leases[key] = lease
        if old is not None and old != lease:
            await self._revoke(old)

    async def heartbeat(self, service: str, instance_id: str, ttl: float) -> bool:
        """Renew the key's lease for the TTL it was granted with; False when the key is gone.

        ``ttl`` is not used: an etcd lease keeps the TTL it was granted with. A key without a
        lease (registered with ``ttl=inf``) never expires, so it only has to exist.
        """
        del ttl
        key = self.key(service, instance_id)
        answer = await self._client.call("/kv/range", {"key": b64(key), "keys_only": True})
        kvs = answer.get("kvs") or []
        if not kvs:
            return False
        lease = int(kvs[0].get("lease", 0))
        if not lease:
            return True
        renewed = await self._client.call("/lease/keepalive", {"ID": lease})
        return int(renewed.get("result", {}).get("TTL", 0)) > 0

    async def deregister(self, service: str, instance_id: str) -> bool:
        """Delete the key and revoke the lease this registrar granted for it; False when absent."""
        key = self.key(service, instance_id)
        answer = await self._client.call("/kv/deleterange", {"key": b64(key)})
        lease = self._leases.pop(key, None)
        if lease is not None:
            await self._revoke(lease)
        return int(answer.get("deleted", 0)) > 0

    async def _revoke(self, lease: int) -> None:
        try:
            await self._client.call("/lease/revoke", {"ID": lease})
        except EtcdApiError as exc:
            if exc.code != GRPC_NOT_FOUND:
                raise

    async def aclose(self) -> None:
        """Close the HTTP session (leases stay until they expire)."""
        await self._client.aclose()
