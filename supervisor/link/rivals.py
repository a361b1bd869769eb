"""sync_clients for our channels that syncwarden did not start, as the running daemon sees them.

Finding them is cyrus/procs.py's (``rival_sync_clients``: /proc, for this imapd.conf, outside
syncwarden's units); this keeps the last answer per link and says when it changes. While one
runs for a link (an entry in cyrus.conf alone races nothing until it is started):

- the link's reason and the STATUS= line name it (``status``: ``links[].rival``);
- the quarantine does not rewrite the link's sync log (the rival renames ``log`` to ``log-run``
  without Cyrus's lock, and may be mid-pass on ``log-run``);
- a drain does not claim that everything was sent: it asks afresh when it would, and ends
  incomplete, naming the rival, if one runs.

/proc is looked at every SCAN_INTERVAL seconds from the tick, and at once when a drain is about
to finish.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

SCAN_INTERVAL = 10.0


class RivalWatch:
    def __init__(self, scan=None):
        """``scan(imapd_conf_path, link_names)`` -> [cyrus.procs.Rival]; None: never look."""
        self.scan = scan
        self.by_link: dict[str, object] = {}
        self.next_scan = 0.0

    def refresh(self, imapd_conf_path, links, mono: float, force: bool = False) -> None:
        if self.scan is None or (mono < self.next_scan and not force):
            return
        self.next_scan = mono + SCAN_INTERVAL
        try:
            found = self.scan(imapd_conf_path, tuple(links))
        except Exception as exc:   # /proc is read as hostile; a failure must not stop the tick
            log.warning("cannot look for sync_clients syncwarden did not start: %s", exc)
            return
        now: dict[str, object] = {}
        for rival in found:
            if rival.pid is not None and rival.link in links:
                now.setdefault(rival.link, rival)
        for link in set(now) | set(self.by_link):
            before, after = self.by_link.get(link), now.get(link)
            if after is not None and (before is None or before.pid != after.pid):
                log.warning("%s: log rewrites and drains of %s wait until it is gone",
                            after.reason, link, extra={"link": link})
            elif after is None and before is not None:
                log.info("the sync_client syncwarden did not start for %s (pid %s) is gone",
                         link, before.pid, extra={"link": link})
        self.by_link = now

    def reason(self, link: str) -> str | None:
        rival = self.by_link.get(link)
        return rival.reason if rival is not None else None
