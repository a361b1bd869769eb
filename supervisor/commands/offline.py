"""What ``syncwarden status`` can tell without the daemon: config, backlog files, last status."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import __version__
from ..cyrus.backlog import Backlog
from ..configload import ConfigProblem, load_checked
from ..link.strays import StrayChannels
from ..preflight import stray_channels
from ..paths import Instance
from ..systemd.units import worker_unit


def offline_status(config_path: Path, why: str, instance: Instance = Instance()) -> dict:
    status_path = instance.status_file
    doc = {"instance": instance.name, "version": __version__, "links": [], "quarantine": [],
           "daemon": {"running": False, "error": why}}
    try:
        last = json.loads(Path(status_path).read_text())
        doc["daemon"]["last_status_written_at"] = last.get("written_at")
        doc["daemon"]["last_pid"] = last.get("pid")
    except (OSError, ValueError):
        pass
    try:
        cfg, imapd = load_checked(config_path)
    except ConfigProblem as exc:
        doc["error"] = str(exc)
        return doc
    doc["role"] = cfg.role
    now = time.monotonic()
    strays = StrayChannels()
    strays.set(imapd, stray_channels(cfg, imapd))
    doc["unsupervised_channels"] = strays.as_json(now, time.time())
    for name, s in cfg.links.items():
        snap = Backlog(imapd.sync_dir(name)).read(now, time.time())
        doc["links"].append({
            "name": name, "state": None, "state_code": None, "since": None,
            "reason": "daemon not running",
            "replica": {"host": s.host, "port": s.port, "reachable": None},
            "backlog": snap.as_json(),
            "worker": {"unit": worker_unit(name, instance.name), "active": None},
            "quarantined": 0})
    return doc
