"""Where one syncwarden instance keeps its files: the one place that knows the paths.

One daemon supervises one Cyrus instance (one imapd.conf). The default instance keeps the paths
of a single-instance install (/etc/syncwarden/syncwarden.yaml, /run/syncwarden,
/var/lib/syncwarden), so existing installs are untouched; instance NAME, run as
``syncwarden@NAME.service`` / ``syncwarden -i NAME``, gets /etc/syncwarden/NAME.yaml and its own
/run/syncwarden/NAME/ and /var/lib/syncwarden/NAME/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT = "default"
CONFIG_DIR = Path("/etc/syncwarden")
RUNTIME_ROOT = Path("/run/syncwarden")
STATE_ROOT = Path("/var/lib/syncwarden")

# An instance name is a file name, a directory name and a systemd instance name at once, and it
# qualifies worker unit names as NAME:LINK: like link names, rejected rather than escaped.
# The default instance's own entries in /run/syncwarden and /var/lib/syncwarden ("users",
# "quarantine", "check", "repair", "verify") would collide with an instance of that name.
INSTANCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
RESERVED = {"users", "quarantine", "check", "checks", "repair", "verify", "syncwarden", "seed",
            "moves"}


class InstanceError(ValueError):
    pass


def check_name(name: str) -> str:
    if name == DEFAULT:
        return name
    if not INSTANCE_NAME.match(name) or name in RESERVED:
        raise InstanceError(
            f"instance name {name!r}: lowercase letters, digits, '_' and '-', at most 32,"
            f" starting with a letter or digit, not one of {', '.join(sorted(RESERVED))}")
    return name


@dataclass(frozen=True)
class Instance:
    name: str = DEFAULT
    root: Path = Path("/")     # another root only in tests

    def __post_init__(self):
        check_name(self.name)

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT

    def _sub(self, base: Path) -> Path:
        base = self.root / base.relative_to("/")
        return base if self.is_default else base / self.name

    @property
    def config(self) -> Path:
        return (self.root / CONFIG_DIR.relative_to("/")
                / ("syncwarden.yaml" if self.is_default else f"{self.name}.yaml"))

    @property
    def runtime_dir(self) -> Path:
        return self._sub(RUNTIME_ROOT)

    @property
    def state_dir(self) -> Path:
        return self._sub(STATE_ROOT)

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "control.sock"

    @property
    def status_file(self) -> Path:
        return self.runtime_dir / "status.json"

    @property
    def users_dir(self) -> Path:
        """User lists the daemon writes for one-shot user syncs (read by the worker as cyrus)."""
        return self.runtime_dir / "users"

    def users_file(self, link: str) -> Path:
        return self.users_dir / link

    def worker_settings(self, unit_instance: str) -> Path:
        """What a worker unit (``syncwarden-*@UNIT_INSTANCE``) starts from, left by the daemon
        (commands/worker.py). One directory for every instance, since the units name the file
        by their instance string alone (Environment=SYNCWARDEN_SETTINGS in units/)."""
        return self.root / RUNTIME_ROOT.relative_to("/") / "workers" / f"{unit_instance}.json"

    def crash_flag(self, point: str) -> Path:
        """Fault injection for the crash-safety system tests (see link/quarantine.py)."""
        return self.runtime_dir / f"test-crash-at-{point}"

    @property
    def holds_file(self) -> Path:
        return self.state_dir / "holds.json"

    @property
    def role_file(self) -> Path:
        return self.state_dir / "role.json"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def lifecycle_file(self) -> Path:
        """Per link: seeded or not, a freeze, a retirement (link/lifecycle_store.py)."""
        return self.state_dir / "lifecycle.json"

    @property
    def seed_dir(self) -> Path:
        """A running seed's plan and progress, per link (resumed after a restart)."""
        return self.state_dir / "seed"

    def listing_file(self, link: str) -> Path:
        """Where a seed's ``ctl_mboxlist -d`` writes the instance's mailboxes."""
        return self.runtime_dir / "seed" / f"{link}.mailboxes"

    @property
    def journal_cursor(self) -> Path:
        """Where the daemon stopped reading the workers' journal (systemd/follow.py)."""
        return self.state_dir / "journal-cursor"

