"""Settings: environment variables and ``.env`` for the process, a YAML file for services.

``load_config`` turns the YAML file into frozen dataclasses. Any mistake (unknown key, wrong
type, bad port, a service named like a gateway endpoint) raises ``ConfigError`` whose message
is one line naming the file, the key and the reason.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from msa_gateway.balancing.table import BALANCER_NAMES
from msa_gateway.config_yaml import load_yaml
from msa_gateway.discovery import codec
from msa_gateway.errors import ConfigError
from msa_gateway.model import (
    RESERVED_NAMES,
    BalancerOptions,
    HealthCheck,
    HedgingConfig,
    Instance,
    LimitsConfig,
    OutlierConfig,
    RetryPolicy,
    ServiceOptions,
    Timeouts,
    WebSocketConfig,
    check_cookie_name,
    check_hash_key,
)
from msa_gateway.policies.chain import PolicyError, merge_policies
from msa_gateway.routing.config import RouteConfig, RouteModel, parse_routes

_PERCENTILE_RE = re.compile(r"^p(?:[5-9][0-9](?:\.[0-9])?)$")
SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$")
EMBEDDED_CONFIG = "embedded:default_config.yaml"


def one_of(what: str, value: str, names: Collection[str]) -> str:
    """Return ``value`` when a table names it, else raise naming the known names (table order)."""
    if value not in names:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(names)}")
    return value


class Settings(BaseSettings):
    """Process settings from the environment and ``.env`` (names as users know them)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    debug: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    service_discovery_type: str = "static"
    gateway_config: str | None = None
    gateway_admin_token: str | None = None
    upstream_client: str = "native"
    drain_timeout: Annotated[float, Field(ge=0, le=3600)] = 30.0
    max_request_line: Annotated[int, Field(ge=64, le=1_048_576)] = 8192
    max_header_bytes: Annotated[int, Field(ge=1024, le=16_777_216)] = 32768
    max_headers: Annotated[int, Field(ge=1, le=10_000)] = 100
    header_timeout: Annotated[float, Field(gt=0, le=3600)] = 10.0
    body_timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0
    busy_poll_us: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    allow_underscores_in_headers: bool = False
    admin_host: str = "127.0.0.1"
    admin_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    admin_read_token: str | None = None
    rewrite_redirects: bool = True
    discovery_recovery_grace: Annotated[float, Field(ge=0, le=3600)] | None = None  # None: automatic
    discovery_recovery_grace_max: Annotated[float, Field(ge=0, le=3600)] = 60.0

    consul_host: str = "localhost"
    consul_port: Annotated[int, Field(ge=1, le=65535)] = 8500
    consul_scheme: Literal["http", "https"] = "http"
    consul_token: str | None = None
    consul_datacenter: str | None = None
    consul_allow_warning: bool = False
    consul_wait: Annotated[float, Field(gt=0, le=600)] = 55.0

    redis_host: str = "localhost"
    redis_port: Annotated[int, Field(ge=1, le=65535)] = 6379
    redis_password: str | None = None
    redis_db: Annotated[int, Field(ge=0)] = 0
    redis_url: str | None = None

    etcd_endpoints: str = "http://127.0.0.1:2379"
    etcd_prefix: str = "/msa-gateway/services/"

    tracing: Literal["off", "propagate", "otlp"] = "propagate"
    otel_traces_sampler: Literal[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ] = "parentbased_always_on"
    otel_traces_sampler_arg: Annotated[float, Field(ge=0, le=1)] = 1.0
    otel_exporter_otlp_endpoint: str = "http://localhost:4318"
    otel_exporter_otlp_traces_endpoint: str | None = None
    otel_exporter_otlp_headers: str = ""
    otel_service_name: str = "msa-gateway"

    metrics_per_instance: bool = True

    workers: Annotated[int, Field(ge=1, le=256)] = 1
    shared_health_hints: bool = False
    health_probe_concurrency: Annotated[int, Field(ge=1, le=100_000)] = 512
    health_probe_cpu_budget: Annotated[float, Field(gt=0, le=64)] = 0.5
    health_probe_lag_fraction: Annotated[float, Field(gt=0, le=1)] = 0.25

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        """``auto`` is the number of cores this process may run on."""
        return len(os.sched_getaffinity(0)) if isinstance(v, str) and v.strip().lower() == "auto" else v

    @field_validator("shared_health_hints")
    @classmethod
    def _hints_backend(cls, v: bool, info: ValidationInfo) -> bool:
        kind = info.data.get("service_discovery_type")
        if v and kind not in ("redis", "etcd"):
            raise ValueError(f"needs SERVICE_DISCOVERY_TYPE redis or etcd (where hints live), not {kind!r}")
        return v

    @field_validator("service_discovery_type")
    @classmethod
    def _known_provider(cls, v: str) -> str:
        from msa_gateway.discovery.providers import PROVIDERS  # the table names the providers

        return one_of("discovery type", v, PROVIDERS)

    @field_validator("upstream_client")
    @classmethod
    def _known_client(cls, v: str) -> str:
        from msa_gateway.proxy.upstream import UPSTREAM_CLIENTS  # the table names the clients

        return one_of("upstream client", v, UPSTREAM_CLIENTS)


# --- YAML schema (validated, then frozen) -------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class _TimeoutsModel(_Strict):
    connect: Annotated[float, Field(gt=0, le=3600)] = 2.0
    read: Annotated[float, Field(gt=0, le=86400)] = 30.0
    total: Annotated[float, Field(gt=0, le=86400)] | None = None


class _HealthModel(_Strict):
    path: str | None = "/health"
    interval: Annotated[float, Field(gt=0, le=3600)] = 5.0
    timeout: Annotated[float, Field(gt=0, le=600)] = 2.0
    healthy_threshold: Annotated[int, Field(ge=1, le=100)] = 1
    unhealthy_threshold: Annotated[int, Field(ge=1, le=100)] = 2

    @field_validator("path")
    @classmethod
    def _path_absolute(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v


class _RetryModel(_Strict):
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    retry_on_status: list[Annotated[int, Field(ge=500, le=599)]] = Field(default_factory=list)
    retry_on_timeout: bool = False
    retry_on_reset: bool = True
    per_try_timeout: Annotated[float, Field(gt=0, le=3600)] | None = None
    buffer_limit: Annotated[int, Field(ge=0, le=64 * 1024 * 1024)] = 1024 * 1024
    budget_percent: Annotated[float, Field(ge=0, le=100)] = 20.0
    min_retry_concurrency: Annotated[int, Field(ge=0, le=10000)] = 3


class _OutlierModel(_Strict):
    consecutive_failures: Annotated[int, Field(ge=0, le=1000)] = 5
    count_all_5xx: bool = False
    base_ejection_time: Annotated[float, Field(gt=0, le=86400)] = 30.0
    max_ejection_time: Annotated[float, Field(gt=0, le=86400)] = 300.0
    max_ejection_percent: Annotated[float, Field(ge=0, le=100)] = 50.0
    always_eject_one: bool = True
    decay_interval: Annotated[float, Field(gt=0, le=86400)] = 10.0
    latency_multiple: Annotated[float, Field(ge=0, le=1000)] = 0.0
    latency_min: Annotated[float, Field(gt=0, le=3600)] = 0.1


class _HedgingModel(_Strict):
    delay: float | str
    max_hedges: Annotated[int, Field(ge=1, le=5)] = 1
    min_delay: Annotated[float, Field(gt=0, le=3600)] = 0.005

    @field_validator("delay", mode="before")
    @classmethod
    def _delay(cls, v: object) -> object:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise ValueError("expected seconds or a percentile of recent latency like 'p95' (p50-p99.9)")
        if isinstance(v, str) and not _PERCENTILE_RE.match(v):
            raise ValueError("expected seconds or a percentile of recent latency like 'p95' (p50-p99.9)")
        if not isinstance(v, str) and not 0 < v <= 3600:
            raise ValueError("a fixed delay must be more than 0 and at most 3600 seconds")
        return v

    def frozen(self) -> HedgingConfig:
        if isinstance(self.delay, str):
            percentile = float(self.delay[1:])
            return HedgingConfig(percentile=percentile, max_hedges=self.max_hedges, min_delay=self.min_delay)
        return HedgingConfig(delay=self.delay, max_hedges=self.max_hedges, min_delay=self.min_delay)


class _LimitsModel(_Strict):
    max_requests_per_instance: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    max_pending_per_instance: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    max_requests_per_service: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    max_pending_per_service: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    retry_after: Annotated[int, Field(ge=0, le=3600)] = 1


class _BalancerOptionsModel(_Strict):
    hash_key: str = "client_ip"
    virtual_nodes: Annotated[int, Field(ge=1, le=10_000)] = 500
    cookie: str = "msa_sticky"
    cookie_max_age: Annotated[int, Field(ge=0, le=400 * 86400)] | None = None
    decay: Annotated[float, Field(gt=0, le=3600)] = 10.0

    _hash_key = field_validator("hash_key")(check_hash_key)
    _cookie = field_validator("cookie")(check_cookie_name)


class _WebSocketModel(_Strict):
    idle_timeout: Annotated[float, Field(gt=0, le=86400)] = 300.0
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000


class _OptionsModel(_Strict):
    timeouts: _TimeoutsModel | None = None
    health_check: _HealthModel | None = None
    balancer: str | None = None
    balancer_options: _BalancerOptionsModel | None = None
    websocket: _WebSocketModel | None = None
    pass_host_header: bool | None = None
    max_connections_per_instance: Annotated[int, Field(ge=1, le=100000)] | None = None
    retry: _RetryModel | None = None
    outlier: _OutlierModel | None = None
    limits: _LimitsModel | None = None
    panic_threshold: Annotated[float, Field(ge=0, le=100)] | None = None
    max_body_size: Annotated[int, Field(ge=0)] | None = None
    hedging: _HedgingModel | None = None
    policies: dict[str, Any] | None = None  # parsed by policies/chain.py, one block per policy

    @field_validator("balancer")
    @classmethod
    def _known_balancer(cls, v: str | None) -> str | None:
        return v if v is None else one_of("balancer", v, BALANCER_NAMES)


class _ServiceModel(_OptionsModel):
    instances: list[dict[str, Any]] = Field(default_factory=list)  # records, decoded by ``codec``


class _GatewayModel(_Strict):
    trusted_proxies: list[str] = Field(default_factory=list)
    default_route: bool = True  # /{service}/{path} next to the routes: list
    reload_interval: Annotated[float, Field(ge=0, le=3600)] = (
        2.0  # seconds between file checks; 0: SIGHUP only
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP network") from exc
        return v


class _FileModel(_Strict):
    gateway: _GatewayModel = Field(default_factory=_GatewayModel)
    defaults: _OptionsModel = Field(default_factory=_OptionsModel)
    services: dict[str, _ServiceModel] = Field(default_factory=dict)
    routes: list[RouteModel] = Field(default_factory=list)


# --- frozen result ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """A service's options from the YAML file, and its static instances (if any)."""

    name: str
    options: ServiceOptions
    instances: tuple[Instance, ...] = ()


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The validated YAML file."""

    source: str
    defaults: ServiceOptions = field(default_factory=ServiceOptions)
    services: Mapping[str, ServiceConfig] = field(default_factory=lambda: MappingProxyType({}))
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    default_route: bool = True
    reload_interval: float = 2.0
    digest: str = ""  # sha256 of the file's bytes: which config is running (``/health/``)

    def options_for(self, service: str) -> ServiceOptions:
        """Return the configured options of ``service``, or the defaults."""
        cfg = self.services.get(service)
        return cfg.options if cfg is not None else self.defaults


def _merge(base: ServiceOptions, over: _OptionsModel) -> ServiceOptions:
    """Return ``base`` with every block ``over`` sets replaced (a block replaces the whole block)."""
    changes: dict[str, Any] = {}
    if over.timeouts is not None:
        changes["timeouts"] = Timeouts(**over.timeouts.model_dump())
    if over.health_check is not None:
        changes["health_check"] = HealthCheck(**over.health_check.model_dump())
    if over.retry is not None:
        data = over.retry.model_dump()
        data["retry_on_status"] = frozenset(data["retry_on_status"])
        changes["retry"] = RetryPolicy(**data)
    if over.outlier is not None:
        changes["outlier"] = OutlierConfig(**over.outlier.model_dump())
    if over.limits is not None:
        changes["limits"] = LimitsConfig(**over.limits.model_dump())
    if over.hedging is not None:
        changes["hedging"] = over.hedging.frozen()
    if over.balancer_options is not None:
        changes["balancer_options"] = BalancerOptions(**over.balancer_options.model_dump())
    if over.websocket is not None:
        changes["websocket"] = WebSocketConfig(**over.websocket.model_dump())
    if over.policies is not None:
        changes["policies"] = merge_policies(base.policies, over.policies)
    for name in (
        "balancer",
        "pass_host_header",
        "max_connections_per_instance",
        "panic_threshold",
        "max_body_size",
    ):
        value = getattr(over, name)
        if value is not None:
            changes[name] = value
    return replace(base, **changes)


def validate_service_name(name: str) -> str | None:
    """Return why ``name`` cannot be a service name, or None when it can."""
    if not SERVICE_NAME_RE.match(name):
        return "service names are 1-128 characters of letters, digits, '.', '_', '~' or '-'"
    if name.lower() in RESERVED_NAMES or name in {".", ".."}:
        return f"{name!r} is a gateway endpoint and cannot be a service name"
    return None


def _key(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _instances(source: str, where: str, records: list[dict[str, Any]]) -> tuple[Instance, ...]:
    """Decode a service's static instance records with the rules every registry uses."""
    seen: set[str] = set()
    instances = []
    for i, record in enumerate(records):
        try:
            inst = codec.decode_record(record, source="static", unknown="reject")
        except codec.RecordError as exc:
            key = f"{where}.instances.{i}" + (f".{exc.field}" if exc.field else "")
            raise ConfigError(source, key, exc.reason) from None
        if inst.id in seen:
            raise ConfigError(source, f"{where}.instances.{i}", f"duplicate instance {inst.id!r}")
        seen.add(inst.id)
        instances.append(inst)
    return tuple(instances)


def parse_config(data: Any, source: str) -> GatewayConfig:
    """Validate parsed YAML ``data`` read from ``source``; raise ``ConfigError`` on any mistake."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "(top level)", "expected a mapping with gateway/defaults/services")
    try:
        model = _FileModel.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        reason = err["msg"]
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        more = len(exc.errors()) - 1
        if more:
            reason += f" (and {more} more error{'s' if more > 1 else ''})"
        raise ConfigError(source, _key(loc), reason) from None
    try:
        defaults = _merge(ServiceOptions(), model.defaults)
    except PolicyError as exc:
        raise ConfigError(source, f"defaults.policies.{exc.key}", exc.reason) from None
    except ValueError as exc:
        raise ConfigError(source, "defaults", str(exc)) from None
    services: dict[str, ServiceConfig] = {}
    for name, svc in model.services.items():
        why = validate_service_name(name)
        if why:
            raise ConfigError(source, f"services.{name}", why)
        try:
            options = _merge(defaults, svc)
        except PolicyError as exc:
            raise ConfigError(source, f"services.{name}.policies.{exc.key}", exc.reason) from None
        except ValueError as exc:
            raise ConfigError(source, f"services.{name}", str(exc)) from None
        services[name] = ServiceConfig(
            name=name, options=options, instances=_instances(source, f"services.{name}", svc.instances)
        )
    config = GatewayConfig(
        source=source,
        defaults=defaults,
        services=MappingProxyType(services),
        trusted_proxies=tuple(ipaddress.ip_network(c, strict=False) for c in model.gateway.trusted_proxies),
        default_route=model.gateway.default_route,
        reload_interval=model.gateway.reload_interval,
    )
    if model.routes:
        routes = parse_routes(model.routes, source, config.options_for, validate_service_name)
        config = replace(config, routes=routes)
    return config


def load_config(path: str | None) -> GatewayConfig:
    """Read and validate the YAML file at ``path`` (None: the embedded default)."""
    if path is None or path == EMBEDDED_CONFIG:
        text = resources.files("msa_gateway").joinpath("default_config.yaml").read_text("utf-8")
        source = EMBEDDED_CONFIG
    else:
        source = path
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ConfigError(source, "(file)", exc.strerror or str(exc)) from None
        except UnicodeDecodeError:
            raise ConfigError(source, "(file)", "not UTF-8 text") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(source, where, str(problem)) from None
    config = parse_config(data, source)
    return replace(config, digest="sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest())


def env_error(exc: Exception) -> str:
    """Return one line naming the environment variable and the reason of a settings error."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        name = str(err["loc"][0]).upper() if err["loc"] else "(environment)"
        return f"environment: {name}: {err['msg']}"
    return f"environment: {exc}"
