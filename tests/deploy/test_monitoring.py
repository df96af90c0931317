"""deploy/monitoring: the alert rules unit-tested by promtool (each alert firing and not),
the Prometheus Operator copy of the rules kept identical, and every metric a rule, the
dashboard or the autoscaler's adapter rule reads is one the service really exports (scraped
from a running server)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.core.settings import Settings
from tests.deploy.manifests import K8S, ROOT
from tests.live_server import LiveServer

MONITORING = ROOT / "deploy" / "monitoring"
RULES = yaml.safe_load((MONITORING / "rules.yaml").read_text())
# Series Prometheus makes itself rather than scrapes.
PROMETHEUS_OWN = {"up"}
_FUNCTIONS_AND_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset",
}  # fmt: skip


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make test` installs Debian's prometheus package"
    return found


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (recording rules included)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings, e.g. regexes of label matchers
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        word = match.group()
        if rest.startswith("(") or word in _FUNCTIONS_AND_KEYWORDS:
            continue
        if match.start() > 0 and expr[match.start() - 1] in "$.":  # $__rate_interval
            continue
        if re.fullmatch(r"[0-9.e]+", word):
            continue
        names.add(word)
    return names


def dashboard_exprs() -> Iterator[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield target["expr"]


def rule_exprs() -> Iterator[str]:
    for group in RULES["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]


def recorded() -> set[str]:
    return {r["record"] for g in RULES["groups"] for r in g["rules"] if "record" in r}


def series_names(exposition: str) -> set[str]:
    """Every series name a /metrics answer offers."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "summary": ["_sum", "_count"],
        }.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
        names |= {sample.name for sample in family.samples}
    return names


def monitored() -> dict[str, list[str]]:
    """The queries of the rules, the dashboard and the autoscaler's adapter rule."""
    adapter = yaml.safe_load((MONITORING / "prometheus-adapter.yaml").read_text())
    return {
        "rules.yaml": list(rule_exprs()),
        "grafana-dashboard.json": list(dashboard_exprs()),
        "prometheus-adapter.yaml": [r["seriesQuery"] for r in adapter["rules"]["custom"]],
    }


@pytest.fixture(scope="module")
def exported(settings: Settings) -> set[str]:
    """Every series name a running server's /metrics offers (the worker's metrics share the
    registry and are served there too)."""
    with LiveServer(settings) as live:
        response = httpx.get(f"{live.url}/metrics", timeout=10)
    assert response.status_code == 200
    return series_names(response.text)


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    tool = promtool()
    check = subprocess.run(
        [tool, "check", "rules", "rules.yaml"], cwd=MONITORING, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(
        [tool, "test", "rules", "rules.test.yaml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = {r["alert"] for g in RULES["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((MONITORING / "rules.test.yaml").read_text())["tests"]
    firing, quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == alerts
    assert quiet == alerts


def test_the_operator_copy_of_the_rules_is_the_same() -> None:
    copy = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())
    assert copy["spec"]["groups"] == RULES["groups"]


def test_the_name_check_sees_a_misspelt_metric() -> None:
    expr = 'sum by (route, le) (rate(http_request_total{route=~"/a|/b"}[5m])) / 0.001'
    assert metric_names(expr) == {"http_request_total"}
    assert metric_names("couponflash:http_error_ratio:rate1h > 14.4 * 0.001") == {
        "couponflash:http_error_ratio:rate1h"
    }


def test_rules_dashboard_and_adapter_read_exported_metrics(exported: set[str]) -> None:
    known = exported | recorded() | PROMETHEUS_OWN
    for source, exprs in monitored().items():
        assert exprs, source
        for expr in exprs:
            unknown = metric_names(expr) - known
            assert not unknown, f"{source}: {expr!r} reads {sorted(unknown)}, not exported"


def test_the_dashboard_shows_requests_latency_errors_pool_outbox_and_fan_out() -> None:
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_requests_in_flight",
        "db_pool_connections",
        "outbox_pending_jobs",
        "outbox_oldest_pending_age_seconds",
        "outbox_dead_jobs",
        "notifications_created_total",
        "notifications_delivered_total",
        "db_up",
    } <= used
