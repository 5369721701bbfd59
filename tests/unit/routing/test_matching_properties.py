"""Property-based tests (hypothesis) for route, origin and header matching against plain reference models."""

from __future__ import annotations

import ipaddress

from hypothesis import assume, given
from hypothesis import strategies as st

from msa_gateway.errors import ConfigError
from msa_gateway.model import ServiceOptions
from msa_gateway.policies import cors, transforms
from msa_gateway.proxy.trust import client_address
from msa_gateway.routing.config import RouteConfig, RouteModel, parse_routes
from msa_gateway.routing.table import CompiledRoute, RouteTable, request_host
from msa_gateway.settings import validate_service_name

SEGMENT = st.text("abcxyz09-._", min_size=1, max_size=6).filter(lambda s: s not in {".", ".."})
SEGMENTS = st.lists(SEGMENT, min_size=0, max_size=4)
LABEL = st.text("abcdefghij0123456789", min_size=1, max_size=8)
HEADER_NAMES = st.sampled_from([b"x-a", b"x-b", b"x-c", b"x-d"])
HEADERS = st.lists(st.tuples(HEADER_NAMES, st.sampled_from([b"1", b"2", b"v"])), max_size=6)


def compiled(prefix: str, **extra: object) -> CompiledRoute:
    (config,) = parse_routes(
        [RouteModel(service="s", path_prefix=prefix, **extra)],  # type: ignore[arg-type]
        "t.yaml",
        lambda _: ServiceOptions(),
        validate_service_name,
    )
    return CompiledRoute(config, None)


@given(SEGMENTS.filter(lambda s: not s or s[0] not in {"health", "metrics"}), SEGMENTS, st.booleans())
def test_a_prefix_matches_exactly_the_paths_whose_leading_segments_are_its_own(
    prefix: list[str], path: list[str], trailing: bool
) -> None:
    route = compiled("/" + "/".join(prefix) + ("/" if trailing and prefix else ""))
    raw = ("/" + "/".join(path)).encode()
    assert route.matches(raw, "GET", []) == (path[: len(prefix)] == prefix)


@given(
    st.lists(
        st.tuples(HEADER_NAMES, st.sampled_from(["1", "2", None])), max_size=3, unique_by=lambda t: t[0]
    ),
    HEADERS,
)
def test_header_matches_require_every_named_header_with_its_value(
    wanted: list[tuple[bytes, str | None]], sent: list[tuple[bytes, bytes]]
) -> None:
    route = compiled("/a", headers={n.decode(): v for n, v in wanted})
    expected = all(
        any(n == name and (v is None or value == v.encode()) for name, value in sent) for n, v in wanted
    )
    assert route.matches(b"/a/x", "GET", sent) == expected


@given(st.lists(LABEL, min_size=1, max_size=3), st.sampled_from(["http", "https"]), LABEL)
def test_a_wildcard_origin_admits_every_subdomain_and_nothing_else(
    labels: list[str], scheme: str, stranger: str
) -> None:
    config = cors.parse({"allow_origins": ["https://*.example.com", "https://app.test"]})
    origin = f"{scheme}://{'.'.join(labels)}.example.com".encode()
    assert config.allows(origin) == (scheme == "https")
    assert config.allows(origin.upper()) == (scheme == "https")
    assert not config.allows(b"https://example.com")
    assert not config.allows(f"https://{stranger}example.com".encode())
    assert not config.allows(f"https://{stranger}.example.com.evil.net".encode())
    assert config.allows(b"https://app.test") and not config.allows(f"https://{stranger}.app.test".encode())


@given(
    st.lists(st.tuples(HEADER_NAMES, st.sampled_from([b"1", b"2"])), max_size=6),
    st.sets(HEADER_NAMES, max_size=2),
    st.sets(HEADER_NAMES, max_size=2),
)
def test_header_transforms_remove_set_and_keep_the_rest_in_order(
    headers: list[tuple[bytes, bytes]], removed: set[bytes], replaced: set[bytes]
) -> None:
    side = transforms.parse(
        {
            "request": {
                "remove": [n.decode() for n in removed],
                "set": {n.decode(): "new" for n in replaced},
            }
        }
    ).request
    assert side is not None
    out = transforms.SideOps(side).apply(None, headers)
    untouched = [(n, v) for n, v in headers if n not in removed and n not in replaced]
    assert out[: len(untouched)] == untouched
    for name in replaced:
        assert [v for n, v in out if n == name] == [b"new"]
    for name in removed - replaced:
        assert name not in {n for n, _ in out}


@given(st.lists(st.ip_addresses(v=4).map(str), max_size=4), st.ip_addresses(v=4).map(str))
def test_an_untrusted_peer_is_the_client_whatever_it_sends(hops: list[str], peer: str) -> None:
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    headers = [(b"x-forwarded-for", ", ".join(hops).encode())] if hops else []
    got = client_address(peer, headers, trusted)
    if ipaddress.ip_address(peer) not in trusted[0]:
        assert got == peer
    else:  # the rightmost hop not in a trusted network, or the leftmost when all are trusted
        chain = [peer, *reversed(hops)]
        expected = next((h for h in chain if ipaddress.ip_address(h) not in trusted[0]), chain[-1])
        assert got == expected


@given(LABEL, st.sampled_from(["", ":8080"]), st.booleans())
def test_the_host_is_matched_without_port_and_case(label: str, port: str, upper: bool) -> None:
    host = f"{label}.Example.com{port}"
    assert (
        request_host([(b"host", (host.upper() if upper else host).encode())])
        == f"{label}.example.com".encode()
    )


def test_the_table_tries_exact_then_wildcard_then_any_host() -> None:
    routes = parse_routes(
        [
            RouteModel(service="any", path_prefix="/a/b"),
            RouteModel(service="wild", host="*.x.com", path_prefix="/"),
            RouteModel(service="exact", host="api.x.com", path_prefix="/a"),
        ],
        "t.yaml",
        lambda _: ServiceOptions(),
        validate_service_name,
    )
    table = RouteTable([CompiledRoute(r, None) for r in routes])

    class Req:
        method = "GET"

        def __init__(self, host: bytes, path: bytes) -> None:
            self.headers = [(b"host", host)]
            self.raw_path = path

    def service(host: bytes, path: bytes) -> str | None:
        hit = table.match(Req(host, path))  # type: ignore[arg-type]
        return None if hit is None else hit.service

    assert service(b"api.x.com", b"/a/b/c") == "exact"
    assert service(b"api.x.com", b"/z") == "wild"
    assert service(b"w.x.com", b"/a/b") == "wild"
    assert service(b"other", b"/a/b") == "any"
    assert service(b"other", b"/a") is None


ROUTE = st.fixed_dictionaries(
    {"service": st.just("s"), "path_prefix": st.sampled_from(["/", "/a", "/a/b", "/b", "/a/b/c"])},
    optional={
        "host": st.sampled_from(["x.com", "a.x.com", "*.x.com", "*.a.x.com"]),
        "methods": st.sampled_from([["GET"], ["POST"], ["GET", "POST"]]),
        "headers": st.sampled_from([{"X-A": "1"}, {"X-A": "2"}, {"X-B": None}, {"X-A": "1", "X-B": None}]),
    },
)


def reference(
    routes: tuple[RouteConfig, ...], host: str, path: str, method: str, headers: list[tuple[bytes, bytes]]
) -> RouteConfig | None:
    """The rule as the README states it: of every route that matches, the most specific."""

    def host_ok(pattern: str | None) -> bool:
        if pattern is None:
            return True
        if pattern.startswith("*."):
            return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
        return host == pattern

    def path_ok(prefix: bytes) -> bool:
        p = prefix.decode()
        return p == "/" or path == p or path.startswith(p + "/")

    matching = [
        r
        for r in routes
        if host_ok(r.host)
        and path_ok(r.prefix)
        and (r.methods is None or method in r.methods)
        and all(any(n == hn and (v is None or hv == v) for hn, hv in headers) for n, v in r.headers)
    ]
    return max(matching, key=lambda r: r.specificity, default=None)


@given(
    st.lists(ROUTE, min_size=1, max_size=8),
    st.sampled_from(["x.com", "a.x.com", "b.a.x.com", "other.net"]),
    st.sampled_from(["/", "/a", "/a/b", "/a/b/c/d", "/b/x", "/ab"]),
    st.sampled_from(["GET", "POST", "PUT"]),
    st.sampled_from(
        [[], [(b"x-a", b"1")], [(b"x-a", b"2"), (b"x-b", b"")], [(b"x-a", b"1"), (b"x-b", b"y")]]
    ),
)
def test_the_table_picks_the_most_specific_matching_route(
    models: list[dict[str, object]], host: str, path: str, method: str, headers: list[tuple[bytes, bytes]]
) -> None:
    try:
        entries = [RouteModel.model_validate(m) for m in models]
        routes = parse_routes(entries, "t.yaml", lambda _: ServiceOptions(), validate_service_name)
    except ConfigError:
        assume(False)  # a conflicting set is refused at start-up; nothing to route
        return
    table = RouteTable([CompiledRoute(r, None) for r in routes])

    class Req:
        raw_path = path.encode()

        def __init__(self) -> None:
            self.method = method
            self.headers = [(b"host", host.encode()), *headers]

    hit = table.match(Req())  # type: ignore[arg-type]
    assert (hit.config if hit else None) == reference(routes, host, path, method, headers)
