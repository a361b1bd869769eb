"""The shipped Prometheus rules and Grafana dashboard: valid, and about metrics that exist.

`promtool` (Debian's prometheus package; scripts/setup installs it) checks the rules file and
runs tests/unit/prometheus/rules_test.yml, which feeds each alert synthetic series.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from supervisor.monitor.metrics import label_names, series_names

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "packaging" / "prometheus" / "syncwarden-rules.yml"
DASHBOARD = REPO / "packaging" / "grafana" / "syncwarden-dashboard.json"
RULES_TEST = Path(__file__).parent / "prometheus" / "rules_test.yml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian"
                                    " package prometheus; scripts/setup installs it)")

# PromQL's own words, and what Prometheus itself adds to every target.
PROMQL = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
          "group_right", "bool", "offset", "sum", "count", "max", "min", "avg", "time",
          "absent", "increase", "rate", "label_values", "humanizeDuration"}
PROMETHEUS = {"up", "instance", "job"}


def names_in(expr: str) -> set[str]:
    """The identifiers of a PromQL expression: metric and label names, functions, keywords
    (quoted strings, Grafana variables and durations left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    return set(re.findall(r"(?<![\w.])[A-Za-z_][A-Za-z0-9_:]*", expr))


def unknown_names(expr: str) -> set[str]:
    return names_in(expr) - series_names() - label_names() - PROMQL - PROMETHEUS


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_queries(doc: dict) -> list[str]:
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            exprs += [var["definition"], var["query"]["query"]]
    return exprs


@needs_promtool
def test_promtool_accepts_the_shipped_rules():
    r = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


@needs_promtool
def test_each_alert_fires_on_its_condition_and_not_before():
    r = subprocess.run([PROMTOOL, "test", "rules", RULES_TEST.name], capture_output=True,
                       text=True, cwd=RULES_TEST.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST.read_text()))
    assert tested == {r["alert"] for r in rules()}       # every alert has a case


def test_the_identifier_check_catches_a_typo():
    assert unknown_names('syncwarden_link_state_cod{link="x"} == 2') == {
        "syncwarden_link_state_cod"}
    assert unknown_names('sum by (lnk) (syncwarden_link_backlog_entries)') == {"lnk"}
    assert unknown_names('syncwarden_link_drains_total{result="drained"}[5m]') == set()


def test_rules_use_only_exported_metrics_and_labels():
    for rule in rules():
        assert not unknown_names(rule["expr"]), (rule["alert"], unknown_names(rule["expr"]))
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_dashboard_is_valid_json_about_exported_metrics_only():
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] == "syncwarden"
    queries = dashboard_queries(doc)
    assert len(queries) >= 10
    for expr in queries:
        assert not unknown_names(expr), (expr, unknown_names(expr))
    used = set().union(*(names_in(e) for e in queries)) & series_names()
    # the figures the dashboard is for
    assert {"syncwarden_link_state_code", "syncwarden_link_backlog_entries",
            "syncwarden_link_backlog_oldest_age_seconds", "syncwarden_link_replica_reachable",
            "syncwarden_link_quarantined_users", "syncwarden_link_drains_total",
            "syncwarden_link_last_check_result"} <= used
    for panel in doc["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_shipped_by_both_packages():
    install = (REPO / "packaging" / "debian" / "syncwarden.install").read_text()
    spec = (REPO / "packaging" / "rpm" / "syncwarden.spec").read_text()
    for path in (RULES, DASHBOARD):
        rel = str(path.relative_to(REPO))
        assert re.search(rf"^{re.escape(rel)} usr/share/syncwarden/\w+$", install, re.M), rel
        assert rel in spec, rel
    assert "%{_datadir}/syncwarden" in spec
