"""A real gateway: OpenMetrics scrapes carry the client's trace id as an exemplar; text scrapes never do."""

from __future__ import annotations

import aiohttp

from msa_gateway.workers import merge
from tests.support.gateway import serve_gateway, service_yaml
from tests.support.recorder import Recorder, Reply

SAMPLED_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UNSAMPLED_TRACE = "0af7651916cd43dd8448eb211c80319c"
OPENMETRICS = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"


async def test_an_openmetrics_scrape_shows_the_sampled_trace_of_a_request_as_its_exemplar() -> None:
    async with (
        Recorder(Reply(200, body=b"ok")) as rec,
        serve_gateway(service_yaml({"svc": [rec.port]})) as gw,
    ):
        async with aiohttp.ClientSession() as c:
            for trace, flags in ((SAMPLED_TRACE, "01"), (UNSAMPLED_TRACE, "00")):
                headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-{flags}"}
                async with c.get(f"{gw.url}/svc/x", headers=headers) as r:
                    assert r.status == 200
            async with c.get(f"{gw.url}/metrics", headers={"Accept": OPENMETRICS}) as r:
                assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
                om = (await r.read()).decode()
            async with c.get(f"{gw.url}/metrics") as r:
                assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = (await r.read()).decode()
    families = {f.name: f for f in merge.parse(om, openmetrics=True)}
    buckets = [s for s in families["gateway_request_duration_seconds"].samples if s.name.endswith("_bucket")]
    traces = {s.exemplar.labels["trace_id"] for s in buckets if s.exemplar is not None}
    assert SAMPLED_TRACE in traces and UNSAMPLED_TRACE not in traces
    assert f'trace_id="{SAMPLED_TRACE}"' in om
    assert SAMPLED_TRACE not in text and " # {" not in text
    assert 'gateway_request_duration_seconds_count{service="svc"} 2.0' in text
