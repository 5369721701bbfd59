"""The PromQL of the shipped Grafana dashboard and alert rules: collected, syntax-checked, named.

Syntax is checked by Prometheus's own parser (``promtool check rules`` on a generated file of
recording rules, one per expression); the metric names each expression selects come from the
``promql-parser`` AST, so a name is found wherever it sits (inside functions, aggregations,
binary operators, subqueries), never by a regex over the text.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "msa-gateway.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "tests" / "alerts_test.yml"

# What Grafana puts in place of its variables before sending a query (any valid value will do).
GRAFANA_VARIABLES = {"service": ".*", "__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$")
# The series names a family of each type has once it has a sample (the family name is without them).
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def expand(expr: str) -> str:
    """Replace Grafana's ``$var``/``${var}`` by a valid value; an unknown variable raises ``KeyError``."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARIABLES[name]

    return _VARIABLE.sub(value, expr)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row keeps its panels inside


def dashboard_queries(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Return every PromQL expression of ``dashboard`` (panel targets, variable queries), variables expanded.

    Keys say where each expression is, for failure messages.
    """
    out: dict[str, str] = {}
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                out[f"panel {panel['title']!r} target {target['refId']}"] = expand(target["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        if match is None:
            raise ValueError(f"variable {variable['name']!r}: only label_values(...) is understood: {text!r}")
        if match["selector"] is not None:
            out[f"variable {variable['name']!r}"] = expand(match["selector"])
    return out


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    """Return the dashboard JSON as a dict."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def load_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    """Return every rule of the rule file ``path``, across its groups."""
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rule_queries(path: Path = ALERTS) -> dict[str, str]:
    """Return the expression of every rule in ``path``, by rule name."""
    return {rule.get("alert") or rule["record"]: rule["expr"] for rule in load_rules(path)}


def metric_names(expr: str) -> set[str]:
    """Return the metric names ``expr`` selects; a selector without a literal name raises ``ValueError``."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name is None:
                raise ValueError(f"selector without a metric name in {expr!r}")
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def exported_names(exposition: str) -> set[str]:
    """Return the series names a /metrics text exports: every sample's, and those of empty families.

    A labelled family with no child yet (no ejection so far, say) is declared by HELP/TYPE lines
    without a sample; the names its samples will have count, since a panel over it is valid and
    fills in once the event happens.
    """
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        if family.samples:
            names.update(sample.name for sample in family.samples)
        else:
            names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


def unknown_metrics(queries: Mapping[str, str], exported: set[str]) -> dict[str, set[str]]:
    """Return, per query that names any, the metric names not in ``exported``."""
    out = {where: metric_names(expr) - exported for where, expr in queries.items()}
    return {where: missing for where, missing in out.items() if missing}


def promtool_check(queries: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``promtool check rules`` on one recording rule per query (Prometheus's parser checks each)."""
    rules = [{"record": f"check:query_{i}", "expr": expr} for i, expr in enumerate(queries.values())]
    with tempfile.TemporaryDirectory(prefix="promql-") as tmp:
        path = Path(tmp) / "queries.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
        return promtool("check", "rules", "--lint=none", str(path))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run Debian's ``promtool`` with ``args`` from the repository root."""
    return subprocess.run(
        ["promtool", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
