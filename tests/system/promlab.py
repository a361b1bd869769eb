"""A real Prometheus (Debian's package) inside a Sandbox, on the container's loopback.

It runs as a transient unit (the packaged prometheus.service is masked in test containers),
scrapes syncwarden's endpoint every second and evaluates a test copy of the shipped rules every
second. Only the test copy may be changed (`for:` shortened): the shipped file itself is what
`promtool check rules` checks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SHIPPED_RULES = REPO / "packaging" / "prometheus" / "syncwarden-rules.yml"
DIR = "/srv/promlab"
PORT = 9090
UNIT = "lab-prometheus"

# Asks the API from inside the container (its loopback is not the host's).
_GET = """
import json, sys, urllib.parse, urllib.request
url = "http://127.0.0.1:%s/api/v1/" % sys.argv[1] + sys.argv[2]
if len(sys.argv) > 3:
    url += "?" + urllib.parse.urlencode({"query": sys.argv[3]})
print(urllib.request.urlopen(url, timeout=10).read().decode())
"""


def rules_for_test(for_durations: dict[str, str]) -> str:
    """The shipped rules with some alerts' ``for:`` changed (test copy only)."""
    doc = yaml.safe_load(SHIPPED_RULES.read_text())
    seen = set()
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in for_durations:
                rule["for"] = for_durations[rule["alert"]]
                seen.add(rule["alert"])
    assert seen == set(for_durations), f"no such alerts: {set(for_durations) - seen}"
    return yaml.safe_dump(doc, sort_keys=False)


class Prometheus:
    def __init__(self, sandbox):
        self.sb = sandbox

    def start(self, target: str, rules: str, job: str = "syncwarden") -> None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "rule_files": [f"{DIR}/rules.yml"],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
        }
        self.sb.run("install", "-d", "-o", "prometheus", "-g", "prometheus", DIR, f"{DIR}/data")
        self.sb.write_file(f"{DIR}/prometheus.yml", yaml.safe_dump(config))
        self.sb.write_file(f"{DIR}/rules.yml", rules)
        self.sb.write_file(f"{DIR}/get.py", _GET)
        self.sb.run("promtool", "check", "config", f"{DIR}/prometheus.yml")
        self.sb.run("systemd-run", f"--unit={UNIT}", "--quiet", "-p", "User=prometheus",
                    "/usr/bin/prometheus", f"--config.file={DIR}/prometheus.yml",
                    f"--storage.tsdb.path={DIR}/data",
                    f"--web.listen-address=127.0.0.1:{PORT}")
        deadline = time.monotonic() + 60
        while not self._ready():
            if time.monotonic() > deadline:
                out = self.sb.run("journalctl", "--no-pager", "-n", "30", "-u", UNIT,
                                  check=False).stdout
                raise AssertionError(f"Prometheus did not come up:\n{out}")
            time.sleep(0.3)

    def _ready(self) -> bool:
        r = self.sb.run("python3", f"{DIR}/get.py", str(PORT), "status/buildinfo", check=False)
        return r.returncode == 0

    def api(self, path: str, query: str | None = None) -> dict:
        argv = ["python3", f"{DIR}/get.py", str(PORT), path] + ([query] if query else [])
        doc = json.loads(self.sb.run(*argv).stdout)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, promql: str) -> list[dict]:
        """An instant query's vector: [{"metric": {...}, "value": [t, "v"]}]."""
        return self.api("query", promql)["result"]

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            found = predicate()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout:g}s: {what}")
            time.sleep(0.5)
