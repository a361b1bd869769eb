"""Where this host's Cyrus is installed: sync_client, master, and the unit that runs Cyrus.

Distributions lay Cyrus out differently (from their packages' file lists and units):
- Debian and Ubuntu: every program in /usr/lib/cyrus/bin; ``cyrus-imapd.service`` runs
  /usr/sbin/cyrmaster, a symlink to /usr/lib/cyrus/bin/master.
- Fedora and RHEL 9/10 (Cyrus 3.4 and later): sync_client and the admin tools in /usr/sbin,
  master and the services it starts in /usr/libexec/cyrus-imapd; ``cyrus-imapd.service``.
- RHEL 8 (Cyrus 3.0): everything in /usr/libexec/cyrus-imapd, master renamed ``cyrus-master``
  (it clashed with Postfix's master).
- upstream's ``make install``: sync_client in /usr/local/sbin, master in /usr/local/libexec.

Each of ``cyrus.sync_client``, ``cyrus.master`` and ``cyrus.service`` may be configured; what is
not is found here: the first candidate that exists. The mail service's unit is best found from
the instance itself: the unit its running master is in (procs.py), whatever it is called.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

SYNC_CLIENT_DIRS = ("/usr/lib/cyrus/bin", "/usr/sbin", "/usr/libexec/cyrus-imapd",
                    "/usr/local/sbin")
# master and the services it starts (imapd, lmtpd, sync_server ...)
SERVICE_DIRS = ("/usr/lib/cyrus/bin", "/usr/libexec/cyrus-imapd", "/usr/local/libexec")
MASTER_NAMES = ("master", "cyrus-master")
# Units that run Cyrus as the distributions ship it (Debian, Fedora, RHEL: all this name).
MAIL_UNITS = ("cyrus-imapd.service",)
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system",
             "/lib/systemd/system")


@dataclass(frozen=True)
class Found:
    """One resolved setting and how it was arrived at (for check-config's report)."""
    value: str | None
    how: str                 # "configured", "found", or why nothing was found

    @property
    def ok(self) -> bool:
        return self.value is not None


def _executable(root: Path, path: str) -> bool:
    p = root / path.lstrip("/")
    return p.is_file() and os.access(p, os.X_OK)


def find_sync_client(root: Path = Path("/")) -> Found:
    for d in SYNC_CLIENT_DIRS:
        if _executable(root, f"{d}/sync_client"):
            return Found(f"{d}/sync_client", "found")
    return Found(None, f"no sync_client in {', '.join(SYNC_CLIENT_DIRS)}")


def find_master(root: Path = Path("/")) -> Found:
    for d in SERVICE_DIRS:
        for name in MASTER_NAMES:
            if _executable(root, f"{d}/{name}"):
                return Found(f"{d}/{name}", "found")
    return Found(None, f"no {' or '.join(MASTER_NAMES)} in {', '.join(SERVICE_DIRS)}")


def installed_mail_unit(root: Path = Path("/")) -> Found:
    for unit in MAIL_UNITS:
        if any((root / d.lstrip("/") / unit).exists() for d in UNIT_DIRS):
            return Found(unit, "installed")
    return Found(None, f"none of {', '.join(MAIL_UNITS)} is installed")


def resolve(settings, root: Path = Path("/")):
    """config.CyrusSettings with sync_client and master filled in where they were not
    configured. Where nothing is found the Debian path stands in, so that what fails (the
    worker's exec, failover) names a path; check-config reports it (check_binaries)."""
    changes = {}
    if settings.sync_client is None:
        changes["sync_client"] = Path(find_sync_client(root).value
                                      or f"{SYNC_CLIENT_DIRS[0]}/sync_client")
    if settings.master is None:
        changes["master"] = Path(find_master(root).value or f"{SERVICE_DIRS[0]}/master")
    return dataclasses.replace(settings, **changes) if changes else settings


def check_binaries(settings, root: Path = Path("/")) -> tuple[dict[str, Found], list[str]]:
    """({"sync_client": Found, "master": Found}, problems) for the configured settings. A
    missing sync_client is preflight.py's to report (the daemon reports it too): only how it
    was found is said here."""
    found, problems = {}, []
    for key, finder, why in (("sync_client", find_sync_client, None),
                             ("master", find_master, "failover runs it to read the master")):
        configured = getattr(settings, key)
        f = Found(str(configured), "configured") if configured is not None else finder(root)
        found[key] = f
        if why is None:
            continue
        if f.ok and not _executable(root, f.value):
            problems.append(f"cyrus.{key}: {f.value} is not an executable file ({why})")
        elif not f.ok:
            problems.append(f"cyrus.{key}: {f.how}; set cyrus.{key} to where it is ({why})")
    return found, problems


def mail_unit(configured: str | None, running: dict[int, str | None],
              installed: Found) -> tuple[Found, list[str]]:
    """The unit that runs this instance's Cyrus, and problems: configured (it must be the one
    the running master is in), else the running master's unit, else an installed one.
    running: {pid: unit or None} of the instance's running master processes."""
    units = sorted({u for u in running.values() if u})
    where = ", ".join(f"pid {pid}" + (f" in {u}" if u else " in no unit")
                      for pid, u in sorted(running.items()))
    if configured:
        if running and configured not in units:
            return Found(configured, "configured"), [
                f"cyrus.service: {configured}, but this instance's master runs as {where}"]
        return Found(configured, "configured"), []
    if len(units) == 1:
        return Found(units[0], "runs this instance's master"), []
    if len(units) > 1:
        return Found(None, "several"), [f"cyrus.service: this instance's master runs as {where};"
                                        " set cyrus.service to the one that should run it"]
    if running:
        return Found(None, "none"), [f"cyrus.service: this instance's master runs as {where},"
                                     " outside systemd: syncwarden cannot be ordered after it"]
    return installed, [] if installed.ok else [
        f"cyrus.service: Cyrus is not running and {installed.how}; set cyrus.service to the"
        " unit that runs Cyrus"]


def order_problem(daemon_unit: str, mail: str, before: list[str] | None) -> list[str]:
    """The daemon must stop after the mail service (systemd stops units in the reverse order
    of starting: Before= the mail service), so that a shutdown drains after the last
    accepted message. before: the daemon unit's Before= list; None when systemd cannot say."""
    if before is None or mail in before:
        return []
    return [f"cyrus.service: {daemon_unit} is not ordered Before={mail}, so at shutdown the"
            f" links drain while {mail} still accepts mail; add it with `systemctl edit"
            f" {daemon_unit}` ([Unit] Before={mail})"]
