"""Per-request choice of a split route: weights, rule precedence, sticky hashing, unregistered targets."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st

from msa_gateway.model import ServiceOptions
from msa_gateway.registry.snapshot import ServiceRoute
from msa_gateway.routing.split import MatchRule, SplitConfig, SplitTarget
from msa_gateway.routing.splitter import Splitter, cookies_of, hash_point

OPTS = ServiceOptions()
Pair = tuple[bytes, bytes]
Headers = list[Pair]


class Tally:
    """Stands in for ``gateway_route_split_total``: one child per service."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def child(self, service: str) -> Any:
        tally = self

        class Child:
            def inc(self) -> None:
                tally.counts[service] += 1

        return Child()


def splitter(
    weights: Iterable[tuple[str, int]],
    rules: Iterable[MatchRule] = (),
    *,
    registered: Iterable[str] | None = None,
    draw: Callable[[int], int] | None = None,
    sticky_header: bytes | None = None,
    sticky_cookie: bytes | None = None,
    tally: Tally | None = None,
) -> Splitter:
    targets = tuple(SplitTarget(s, w, OPTS) for s, w in weights)
    config = SplitConfig(targets, tuple(rules), sticky_header, sticky_cookie)
    live = None if registered is None else set(registered)

    def resolve(service: str, options: ServiceOptions) -> ServiceRoute | None:
        return cast("ServiceRoute", service) if live is None or service in live else None

    return Splitter(config, resolve, (tally or Tally()).child, draw or random.Random(7).randrange)


def rule(service: str, headers: Sequence[Pair] = (), cookies: Sequence[Pair] = ()) -> MatchRule:
    return MatchRule(tuple(headers), tuple(cookies), service, OPTS)


def one(s: Splitter, headers: Headers) -> str | None:
    """Return the picked target's name (the fake resolve hands out service names)."""
    return cast("str | None", s.pick(headers))


def picks(s: Splitter, n: int, headers: Headers | None = None) -> Counter[str | None]:
    return Counter(one(s, headers or []) for _ in range(n))


def test_a_five_percent_canary_over_10000_requests_lands_five_percent_plus_minus_one() -> None:
    for seed in range(20):
        tally = Tally()
        s = splitter([("v1", 95), ("v2", 5)], draw=random.Random(seed).randrange, tally=tally)
        canary = picks(s, 10_000)["v2"]
        assert 400 <= canary <= 600, (seed, canary)
        assert tally.counts == {"v1": 10_000 - canary, "v2": canary}


@given(st.lists(st.integers(1, 50), min_size=1, max_size=6))
def test_every_point_of_the_cumulative_table_maps_to_exactly_its_targets_weight(weights: list[int]) -> None:
    points = iter(range(sum(weights)))
    s = splitter([(f"s{i}", w) for i, w in enumerate(weights)], draw=lambda total: next(points))
    assert picks(s, sum(weights)) == {f"s{i}": w for i, w in enumerate(weights)}


def test_a_header_rule_beats_the_split_and_the_first_matching_rule_wins() -> None:
    s = splitter(
        [("v1", 1_000_000)],
        [rule("v2", [(b"x-canary", b"1")]), rule("v3", [(b"x-canary", b"1"), (b"x-team", b"qa")])],
    )
    assert picks(s, 50, [(b"x-canary", b"1")]) == {"v2": 50}
    assert picks(s, 5, [(b"x-team", b"qa"), (b"x-canary", b"1")]) == {"v2": 5}  # file order, not specificity
    assert picks(s, 5, [(b"x-canary", b"0")]) == {"v1": 5}  # exact value only
    assert picks(s, 5, [(b"x-canary", b"11")]) == {"v1": 5}


def test_a_cookie_rule_matches_one_cookie_among_many_and_header_and_cookie_must_both_hold() -> None:
    s = splitter(
        [("v1", 1)],
        [rule("v3", [(b"x-team", b"qa")], [(b"canary", b"yes")]), rule("v2", cookies=[(b"canary", b"yes")])],
    )
    assert one(s, [(b"cookie", b"session=abc; canary=yes; theme=dark")]) == "v2"
    assert one(s, [(b"cookie", b"a=1"), (b"cookie", b'canary="yes"')]) == "v2"  # several Cookie headers
    assert one(s, [(b"cookie", b"canary=yes"), (b"x-team", b"qa")]) == "v3"
    assert one(s, [(b"x-team", b"qa")]) == "v1"
    assert one(s, [(b"cookie", b"canary=no; xcanary=yes")]) == "v1"


def test_a_rule_beats_a_sticky_key() -> None:
    s = splitter([("v1", 1), ("v2", 1)], [rule("v3", [(b"x-canary", b"1")])], sticky_header=b"x-user")
    assert picks(s, 20, [(b"x-user", b"u1"), (b"x-canary", b"1")]) == {"v3": 20}


@given(st.lists(st.binary(min_size=1, max_size=12), min_size=1, max_size=30), st.integers(1, 99))
def test_a_sticky_user_keeps_a_target_and_raising_the_canary_only_moves_users_towards_it(
    users: list[bytes], canary: int
) -> None:
    before = splitter([("v1", 100 - canary), ("v2", canary)], sticky_header=b"x-user")
    after = splitter([("v1", max(100 - canary - 1, 1)), ("v2", min(canary + 1, 99))], sticky_header=b"x-user")
    for user in users:
        headers = [(b"x-user", user)]
        first = one(before, headers)
        assert all(one(before, headers) == first for _ in range(3))
        if first == "v2":
            assert one(after, headers) == "v2"


def test_a_sticky_cookie_spreads_users_by_weight_and_a_request_without_it_is_drawn() -> None:
    s = splitter([("v1", 90), ("v2", 10)], sticky_cookie=b"uid", draw=lambda total: total - 1)
    users = Counter(one(s, [(b"cookie", b"uid=user-%d" % i)]) for i in range(10_000))
    assert 0.09 <= users["v2"] / 10_000 <= 0.11
    assert picks(s, 5, [(b"cookie", b"other=1")]) == {"v2": 5}  # the draw (last point) decides


def test_the_hash_point_is_pinned_so_every_worker_and_release_agrees() -> None:
    # not Python's hash(): that one changes per process, and each worker would move users around
    assert (hash_point(b"user-1", 100), hash_point(b"user-1", 1_000_003)) == (68, 471_984)


def test_an_unregistered_target_gets_nothing_and_its_share_goes_to_the_others() -> None:
    s = splitter(
        [("v1", 50), ("v9", 45), ("v2", 5)], registered={"v1", "v2"}, draw=random.Random(3).randrange
    )
    got = picks(s, 10_000)
    assert set(got) == {"v1", "v2"} and 0.08 <= got["v2"] / 10_000 <= 0.12  # 5 of 55
    assert splitter([("v9", 1)], registered=()).pick([]) is None


def test_a_rule_whose_service_is_not_registered_falls_through_to_the_split() -> None:
    s = splitter([("v1", 1)], [rule("v2", [(b"x-canary", b"1")])], registered={"v1"})
    assert one(s, [(b"x-canary", b"1")]) == "v1"


def test_cookies_are_parsed_from_every_cookie_header_first_value_winning() -> None:
    jar = cookies_of([(b"cookie", b" a=1;b = 2 ; junk; c="), (b"x", b"d=4"), (b"cookie", b'a=9;e="5"')])
    assert jar == {b"a": b"1", b"b": b"2", b"c": b"", b"e": b"5"}
