"""deploy/prometheus/alerts.yaml: valid for promtool, unit-tested alert by alert, built on metrics
the worker exports, and carried unchanged by the PrometheusRule in deploy/k8s.

promtool comes with Debian's ``prometheus`` package (``.ci/run`` installs it when missing).
Without it these tests skip on a developer's machine and fail under CI (``CI`` set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from worker.obs import metrics

ROOT = Path(__file__).parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yaml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yaml"
DASHBOARD = PROMETHEUS.parent / "grafana" / "scx-forwarder-dashboard.json"
# Series the rules read from kube-state-metrics: a process that exited cannot say why.
KUBE_STATE_METRICS = {
    "kube_pod_container_status_last_terminated_exitcode",
    "kube_pod_container_status_restarts_total",
    "kube_pod_container_status_waiting_reason",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is missing: apt-get install prometheus (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, check=False, cwd=PROMETHEUS, timeout=120
    )


def test_promtool_checks_the_rules() -> None:
    result = run(promtool(), "check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run(promtool(), "test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_stays_quiet() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules()}
    assert alerts == fires, f"no firing test: {alerts - fires}; unknown: {fires - alerts}"
    # NoConsumer's quiet case is "one worker consumes"; every alert has one.
    assert alerts == quiet, f"no quiet test: {alerts - quiet}"


def test_alerts_read_only_metrics_the_worker_exports_or_kube_state_metrics() -> None:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    exported = {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith(metrics.PREFIX)
        for suffix in suffixes.get(family.type, ("",))
    }
    used: set[str] = set()
    for rule in rules():
        used |= set(re.findall(r"\b(?:scx_forwarder|kube)_\w+", rule["expr"]))
    ours = {name for name in used if name.startswith(metrics.PREFIX)}
    assert ours <= exported, ours - exported
    assert used - ours <= KUBE_STATE_METRICS, used - ours - KUBE_STATE_METRICS
    for needed in ("queue_messages", "circuit_state", "api_rate_limited_total", "consumer_up"):
        assert metrics.PREFIX + needed in ours


def test_every_alert_has_a_severity_summary_and_description() -> None:
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_the_prometheus_rule_in_deploy_k8s_is_generated_from_alerts_yaml() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate.py"), "alerts", "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rule_file = ROOT / "deploy" / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
    rule = yaml.safe_load(rule_file.read_text())
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_the_dashboard_shows_every_metric_an_alert_watches() -> None:
    """An operator paged by an alert finds its signal on the dashboard, over time."""
    dashboard = json.loads(DASHBOARD.read_text())
    shown = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    )
    watched = {
        name for rule in rules() for name in re.findall(r"\bscx_forwarder_\w+", rule["expr"])
    }
    assert watched, "the alerts watch the forwarder's metrics"
    assert {name for name in watched if name not in shown} == set()
