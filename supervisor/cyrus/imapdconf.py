"""Reading Cyrus's imapd.conf the way Cyrus reads it, and checking it agrees with our links.

The grammar is lib/libconfig.c's config_read_file() (Cyrus 3.6.1), the reference being
``cyr_info -C FILE conf-all``: a line continues on the next when it ends with a backslash;
leading whitespace is skipped and a line starting with '#' is a comment (no comment after a
value); a key is an optional '@' and then letters, digits, '-' and '_', lowercased, followed at
once by ':' (anything else is "invalid option name", and Cyrus refuses to start); the value is
the rest without surrounding whitespace and must not be empty; ``@include: FILE`` reads FILE
there (relative to the current directory, as Cyrus does: '/' under systemd), and a file read
twice is an error; the same key twice is an error. A key that starts with a service's name and
'_' overrides the option for that service (``sync_client_sync_host`` for sync_client).

Only what syncwarden depends on is interpreted: configdirectory (where the sync logs are),
sync_log, sync_log_channels and each channel's ``<link>_sync_*`` options. A disagreement with
syncwarden's config is one line naming both files: the admin decides which of the two is wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config

DEFAULT_CHANNEL = '""'      # in sync_log_channels: the default channel, {configdirectory}/sync/log
SERVICE = "sync_client"     # the program whose view of the sync_* options matters
# Options (lib/imapoptions) that syncwarden reads as sync_client sees them: only for a known
# option does a "sync_client_" prefix make a service-specific value.
KNOWN = frozenset({"configdirectory", "sync_host", "sync_port", "sync_authname",
                   "sync_password", "sync_realm", "sync_try_imap", "sync_log",
                   "sync_log_channels", "sync_shutdown_file", "sync_cache_db_path"})
SWITCHES = frozenset({"sync_log", "sync_try_imap"})
MAX_INCLUDE_DEPTH = 32


class ImapdConfError(Exception):
    pass


def parse_switch(value: str) -> bool | None:
    """lib/libconfig.c config_parse_switch(): by the first letters; None when Cyrus refuses."""
    if value[:1] in ("0", "n", "f") or value[:2] == "of":
        return False
    if value[:1] in ("1", "y", "t") or value[:2] == "on":
        return True
    return None


@dataclass(frozen=True)
class ImapdConf:
    path: Path
    options: dict[str, str]                   # every key as written (lowercased), all files
    files: tuple[Path, ...] = field(default=())   # the file and what it @includes, in order

    def option(self, key: str) -> str | None:
        """A known option as sync_client sees it: its service-specific value first."""
        return self.options.get(f"{SERVICE}_{key}") if key in KNOWN and \
            f"{SERVICE}_{key}" in self.options else self.options.get(key)

    def get(self, key: str, channel: str | None = None) -> str | None:
        """imap/sync_support.c sync_get_config(): ``<channel>_<key>`` first, then the option."""
        if channel is not None and f"{channel}_{key}" in self.options:
            return self.options[f"{channel}_{key}"]
        return self.option(key)

    def flag(self, key: str, default: bool, channel: str | None = None) -> bool:
        """sync_get_switchconfig(): a channel's own value is read with atoi(), so only a
        number turns it on ("yes" is 0); the option itself is a Cyrus switch."""
        if channel is not None and f"{channel}_{key}" in self.options:
            return _atoi(self.options[f"{channel}_{key}"]) != 0
        value = self.option(key)
        if value is None:
            return default
        switch = parse_switch(value)
        return default if switch is None else switch

    @property
    def configdirectory(self) -> Path | None:
        value = self.option("configdirectory")
        return Path(value) if value else None

    @property
    def channels(self) -> list[str | None]:
        """sync_log_channels as imap/sync_log.c splits it (on spaces); None is the default
        channel (unset, or '""'), whose log is {configdirectory}/sync/log."""
        value = self.option("sync_log_channels")
        if value is None:
            return [None]
        return [None if c == DEFAULT_CHANNEL else c for c in value.split(" ") if c]

    def sync_dir(self, link: str | None) -> Path:
        if self.configdirectory is None:
            raise ImapdConfError(f"{self.path}: configdirectory is not set")
        return self.configdirectory / "sync" / link if link else self.configdirectory / "sync"


def _atoi(text: str) -> int:
    digits = text.strip()
    sign = -1 if digits[:1] == "-" else 1
    digits = digits.lstrip("+-")
    n = len(digits) - len(digits.lstrip("0123456789"))
    return sign * int(digits[:n]) if n else 0


def _read(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ImapdConfError(f"cannot read {path}: {exc.strerror or exc}") from None


class _Reader:
    def __init__(self, read):
        self.read = read
        self.options: dict[str, str] = {}
        self.where: dict[str, str] = {}
        self.files: list[Path] = []
        self.seen: set[str] = set()

    def file(self, path: Path, text: str | None, depth: int = 0) -> None:
        # Cyrus remembers each name as written; a loop through another spelling of a name
        # would recurse until it crashed, so real paths are remembered too.
        real = os.path.realpath(path)
        if str(path) in self.seen or real in self.seen:
            raise ImapdConfError(f"{path}: included twice (Cyrus refuses to start)")
        if depth > MAX_INCLUDE_DEPTH:
            raise ImapdConfError(f"{path}: @include nested deeper than {MAX_INCLUDE_DEPTH}")
        self.seen |= {str(path), real}
        self.files.append(Path(path))
        if text is None:
            text = self.read(path)
        for lineno, line in _logical_lines(text):
            self.line(path, lineno, line, depth)

    def line(self, path: Path, lineno: int, line: str, depth: int) -> None:
        where = f"line {lineno} of {path}"
        p = line.lstrip(_SPACE)
        if not p or p[0] == "#":
            return
        i = 1 if p[0] == "@" else 0
        while i < len(p) and (p[i].isascii() and p[i].isalnum() or p[i] in "-_"):
            i += 1
        if i >= len(p) or p[i] != ":":
            raise ImapdConfError(f"invalid option name on {where} (Cyrus refuses to start)")
        key, value = p[:i].lower(), p[i + 1:].strip(_SPACE)
        if not value:
            raise ImapdConfError(f"empty option value on {where} (Cyrus refuses to start)")
        if key[0] == "@":
            if key != "@include":
                raise ImapdConfError(f"invalid directive {key} on {where}")
            self.file(Path(value), None, depth + 1)
            return
        if key in self.options:
            raise ImapdConfError(f"option '{key}' was specified twice: {self.where[key]} and"
                                 f" {where} (Cyrus refuses to start)")
        if key in SWITCHES or key.startswith(f"{SERVICE}_") and key[len(SERVICE) + 1:] in \
                SWITCHES:
            if parse_switch(value) is None:
                raise ImapdConfError(f"{key}: {value!r} on {where} is not a switch (yes/no,"
                                     " on/off, true/false, 1/0; Cyrus refuses to start)")
        self.options[key], self.where[key] = value, where


_SPACE = " \t\n\r\f\v"


def _logical_lines(text: str):
    """(number of the last physical line, text) per line; a trailing backslash joins the next
    line to this one (the backslash dropped, nothing put in its place)."""
    pending, lineno = "", 0
    for raw in text.split("\n"):
        lineno += 1
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        yield lineno, pending + raw
        pending = ""
    if pending:
        yield lineno, pending


def parse(text: str, path: Path, read=_read) -> ImapdConf:
    """The options of ``text`` (the content of ``path``) and of every file it @includes."""
    r = _Reader(read)
    r.file(Path(path), text)
    return ImapdConf(path=Path(path), options=r.options, files=tuple(r.files))


def load(path: Path) -> ImapdConf:
    return parse(_read(path), Path(path))


def unsupervised_channels(config: Config, imapd: ImapdConf, served=frozenset()) -> list:
    """Channels Cyrus writes a sync log for that no link supervises and nothing in ``served``
    (channels read by a sync_client or a rolling squatter that cyrus.conf starts) reads: their
    log grows without bound. None is the default channel."""
    if not imapd.flag("sync_log", False):
        return []
    return [c for c in dict.fromkeys(imapd.channels)
            if c not in config.links and c not in served]


def describe_channel(channel: str | None) -> str:
    return f"channel {channel}" if channel else "the default channel (\"\" or unset)"


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
            listed = imapd.option("sync_log_channels") or "(unset: only the default channel)"
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
