"""deploy/prometheus/alerts.yml: valid for Prometheus, unit-tested by promtool, complete for on-call."""

from __future__ import annotations

import yaml

from tests.support.promql import ALERT_TESTS, ALERTS, load_rules, promtool

SEVERITIES = {"critical", "warning"}


def test_promtool_check_rules_accepts_every_rule() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_waits_has_a_severity_and_says_what_happened() -> None:
    rules = load_rules()
    assert rules and all("alert" in rule for rule in rules)
    for rule in rules:
        assert rule.get("for"), f"{rule['alert']}: no `for:`"
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), rule[
            "alert"
        ]


def test_every_alert_is_unit_tested_firing() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]  # a case that expects the alert, not only its silence
    }
    assert fired == {rule["alert"] for rule in load_rules()}
