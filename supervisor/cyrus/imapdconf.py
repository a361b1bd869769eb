"""Reading Cyrus's imapd.conf and checking it agrees with syncwarden's links.

Only what syncwarden depends on is read: configdirectory (where the sync logs are), sync_log,
sync_log_channels and each channel's ``<link>_sync_*`` options. A disagreement is reported as
one line naming both files, since the admin has to decide which of the two is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Config

_TRUE = {"1", "yes", "on", "true", "t", "y"}
_FALSE = {"0", "no", "off", "false", "f", "n"}


class ImapdConfError(Exception):
    pass


@dataclass(frozen=True)
class ImapdConf:
    path: Path
    options: dict[str, str]

    def get(self, key: str, channel: str | None = None) -> str | None:
        """An option as sync_client sees it: ``<channel>_<key>`` first, then ``<key>``."""
        if channel is not None and f"{channel}_{key}" in self.options:
            return self.options[f"{channel}_{key}"]
        return self.options.get(key)

    def flag(self, key: str, default: bool, channel: str | None = None) -> bool:
        value = self.get(key, channel)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        return default

    @property
    def configdirectory(self) -> Path | None:
        value = self.options.get("configdirectory")
        return Path(value) if value else None

    @property
    def channels(self) -> list[str]:
        return (self.options.get("sync_log_channels") or "").split()

    def sync_dir(self, link: str) -> Path:
        if self.configdirectory is None:
            raise ImapdConfError(f"{self.path}: configdirectory is not set")
        return self.configdirectory / "sync" / link


def parse(text: str, path: Path) -> ImapdConf:
    # Cyrus's own reader (lib/libconfig.c): "key: value" per line, '#' comments, keys lowercased.
    options: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        options[key.strip().lower()] = value.strip()
    return ImapdConf(path=path, options=options)


def load(path: Path) -> ImapdConf:
    try:
        return parse(Path(path).read_text(encoding="utf-8", errors="replace"), Path(path))
    except OSError as exc:
        raise ImapdConfError(f"cannot read {path}: {exc.strerror or exc}") from None


def cross_check(config: Config, imapd: ImapdConf) -> list[str]:
    """Problems where the syncwarden config and imapd.conf disagree, one line each."""
    src, conf = config.source, imapd.path
    problems = []
    if imapd.configdirectory is None:
        problems.append(f"cyrus.imapd_conf: {conf} has no configdirectory, so the sync logs"
                        " cannot be found")
    if not imapd.flag("sync_log", False):
        problems.append(f"cyrus.imapd_conf: {conf} does not set 'sync_log: on', so Cyrus writes"
                        " no sync log for any link")
    channels = imapd.channels
    for name, link in config.links.items():
        where = f"links.{name}"
        if name not in channels:
            listed = " ".join(channels) if channels else "(unset: only the default channel)"
            problems.append(f"{where}: not in sync_log_channels of {conf} ({listed}); Cyrus"
                            f" writes no log for it (fix {conf} or {src})")
            continue
        host = imapd.get("sync_host", name)
        if host is None:
            problems.append(f"{where}: {conf} sets neither {name}_sync_host nor sync_host")
        elif host.split(":")[0] != link.host:
            problems.append(f"{where}.host: {link.host!r} in {src}, but {conf} says"
                            f" {name}_sync_host: {host}")
        port = imapd.get("sync_port", name)
        if port is None:
            problems.append(f"{where}.port: {conf} sets neither {name}_sync_port nor sync_port"
                            " (Debian has no 'csync' service entry); set it to"
                            f" {link.port}")
        elif port != str(link.port):
            problems.append(f"{where}.port: {link.port} in {src}, but {conf} says"
                            f" {name}_sync_port: {port}")
        if imapd.flag("sync_try_imap", True, name):
            problems.append(f"{where}: {conf} leaves sync_try_imap on, so sync_client first speaks"
                            f" IMAP to the sync port; set '{name}_sync_try_imap: no'"
                            " (or sync_try_imap: no)")
    return problems
