"""``bench.policies`` runs every variant and each one really does its work (a broken variant would measure nothing)."""

from __future__ import annotations

import pytest
from bench import policies


async def test_every_variant_runs_and_prints_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert await policies.main(["--requests", "20", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["none", "cors", "headers", "ip_rules", "routes200"]


async def test_the_cors_and_route_variants_exercise_their_policy() -> None:
    app, path = policies.variant("cors")
    stages = app.rt.snapshot.services["svc"].response_stages
    assert [s.name for s in stages] == ["cors"]
    app, path = policies.variant("routes200")
    table = app.rt.snapshot.routes
    assert table is not None and len(table.routes) == 200 and path.startswith("/r150/")
