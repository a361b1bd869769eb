"""Which Cyrus processes may still write sync log entries with an old ``sync_log_channels``.

A Cyrus program reads imapd.conf once, when it starts (``cyrus_init`` -> ``config_read``,
imap/global.c), and takes the channel list from that copy the first time it logs
(``sync_log_init`` via ``init_internal``, imap/sync_log.c; the same in 3.6.1 and 3.10.0).
Nothing re-reads it later: a process that started before a channel was added to imapd.conf
never logs to that channel. Services are forked and exec'd by master, so new ones read the new
file; but an idle service waits for its next client for 60-120 s (``REUSE_TIMEOUT``,
master/service.c) and serves up to 250 of them (``MAX_USE``), and an IMAP session lasts as long
as its client. A SIGHUP to master recycles every child (``send_sighup``, master/master.c):
idle ones exit at once, busy ones after their current client. Master itself writes no sync log.

So a writer "with the old list" is a process of the instance that changes mailboxes and
started before imapd.conf (or a file it @includes) was last changed. That is conservative (any
later edit counts), and it needs no look into a process's memory: start times from
/proc/PID/stat (field 22, clock ticks after boot) and /proc/stat's ``btime``.

The daemon has no CAP_SYS_PTRACE, so /proc/PID/exe of Cyrus's processes cannot be read; a
process is tied to the instance by its command line (``-C``), by descending from a master of
the instance, or by its session file in ``proc_path`` (procs.py says why each).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from . import procs, proctable
from .imapdconf import ImapdConf

# Programs that change mailboxes, seen state, subscriptions or sieve scripts while they run,
# and so write sync log entries (imap/sync_log.h's callers). Not master, idled, notifyd, fud,
# mupdate, smmapd or ctl_cyrusdb; sync_server only with sync_log_chain (it suppresses its own
# logging otherwise, imap/sync_server.c).
WRITERS = frozenset({"imapd", "pop3d", "lmtpd", "nntpd", "httpd", "timsieved", "cyr_expire",
                     "ipurge", "unexpunge", "reconstruct", "cyr_virusscan"})
# A clock tick is 1/CLK_TCK s and btime a whole second: a start this close after the edit
# may have been before it.
START_SLACK = 1.0


@dataclass(frozen=True)
class OldWriter:
    pid: int
    program: str
    started: float          # wall clock
    why: str                # how it was tied to the instance

    def describe(self) -> str:
        return f"{self.program} pid {self.pid}"


def old_writers(imapd: ImapdConf, changed: float, proc_root="/proc",
                hz: int | None = None) -> list[OldWriter]:
    """The instance's writers that started before ``changed`` (imapd.conf's mtime), by pid."""
    btime = proctable.boot_time(proc_root)
    if btime is None:
        return []
    hz = hz or os.sysconf("SC_CLK_TCK")
    writers = set(WRITERS) | ({"sync_server"} if imapd.flag("sync_log_chain", False) else set())
    out = []
    for proc, why in procs.instance_processes(imapd, proc_root):
        name = procs.program_of(proc)
        started = proctable.start_time(proc.pid, btime, hz, proc_root)
        if name in writers and started is not None and started < changed + START_SLACK:
            out.append(OldWriter(proc.pid, name, started, why))
    return out


def conf_changed(imapd: ImapdConf) -> float:
    """When imapd.conf, or a file it @includes, was last changed (the newest mtime); 0 when
    none can be read."""
    times = []
    for path in imapd.files or (imapd.path,):
        try:
            times.append(os.stat(path).st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def advice(writers: list[OldWriter], imapd: ImapdConf, channel: str, limit: int = 5) -> str:
    """One sentence for status: who, and what ends them."""
    named = ", ".join(w.describe() for w in writers[:limit])
    more = f" and {len(writers) - limit} more" if len(writers) > limit else ""
    return (f"{len(writers)} Cyrus process(es) started before {imapd.path} last changed, so"
            f" they may not log to channel {channel}: {named}{more}; waiting for them to end"
            " (a SIGHUP to Cyrus's master, e.g. `systemctl reload cyrus-imapd`, recycles idle"
            " services at once and busy ones after their client; end long IMAP sessions by"
            " hand)")
