"""Every sync_client command line syncwarden runs, built in one place (pure functions).

Options as Cyrus 3.6 reads them (imap/sync_client.c): ``-C`` the imapd.conf, ``-n`` the channel,
``-R`` rolling in the foreground (``-r`` forks and its parent exits, which systemd would take for
the end of the service), ``-1`` one pass over one file (log-run if present, else log) then exit,
``-F`` the shutdown file, ``-u`` users (``-f`` reads them from a file; exit 1 if any failed),
``-m`` mailboxes, ``-O`` replace the replica's copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import CYRUS_USER


@dataclass(frozen=True)
class SyncClient:
    binary: Path             # cyrus.sync_client
    imapd_conf: Path         # cyrus.imapd_conf

    @classmethod
    def from_config(cls, cfg) -> "SyncClient":
        return cls(cfg.cyrus.sync_client, cfg.cyrus.imapd_conf)

    def _conf(self) -> list[str]:
        return [str(self.binary), "-C", str(self.imapd_conf)]

    # The order of the options is today's: tests and operators find workers by it.
    def rolling(self, link: str, shutdown: Path) -> list[str]:
        """The worker: replicate continuously until the shutdown file appears."""
        return self._conf() + ["-R", "-n", link, "-F", str(shutdown)]

    def one_pass(self, link: str) -> list[str]:
        """A drain pass: one file (log-run if present, else log), then exit."""
        return self._conf() + ["-R", "-1", "-n", link]

    def users(self, link: str, users_file: Path) -> list[str]:
        """A full sync of the users listed in a file, one per line."""
        return self._conf() + ["-n", link, "-u", "-f", str(users_file)]

    def mailboxes(self, link: str, list_file: Path) -> list[str]:
        """A full sync of the mailboxes listed in a file, one admin external name per line
        (``mboxname_from_external``): a seed's shared mailboxes, which ``-u`` does not cover."""
        return self._conf() + ["-n", link, "-m", "-f", str(list_file)]

    def as_cyrus(self, link: str, *args: str) -> list[str]:
        """Run by root from the command line (repair): as the cyrus user, like the workers, so
        that files it creates stay Cyrus's."""
        return ["runuser", "-u", CYRUS_USER, "--"] + self._conf() + ["-n", link, *args]


# --- user moves (docs/moves.md) ------------------------------------------------------------------

def user_to(binary: Path, imapd_conf: Path, channel: str, user: str) -> list[str]:
    """One user's full sync to the sync_server a channel names (``CHANNEL_sync_host`` and its
    credentials in that imapd.conf), as the cyrus user. The channel need not be in
    sync_log_channels: ``-u`` reads no log."""
    return ["runuser", "-u", CYRUS_USER, "--", str(binary), "-C", str(imapd_conf),
            "-n", channel, "-u", user]


def cyr_deny(binary_dir: Path, imapd_conf: Path, user: str, message: str | None = None,
             allow: bool = False, services: str = "*") -> list[str]:
    """Deny ``user`` the services (a wildmat of cyrus.conf service names; ``*``: logins to
    all, and LMTP, which answers 451 4.2.1), or with ``allow`` remove the record. cyr_deny
    also SIGTERMs the sessions it finds (imap/cyr_deny.c kill_existing_services)."""
    argv = ["runuser", "-u", CYRUS_USER, "--", str(Path(binary_dir) / "cyr_deny"),
            "-C", str(imapd_conf)]
    if allow:
        return argv + ["-a", user]
    return argv + ["-s", services] + (["-m", message] if message else []) + [user]
