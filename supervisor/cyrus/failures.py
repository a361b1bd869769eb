"""Reading a worker's log for failed passes and the users to blame (cyrus-lab.md 4c).

sync_client logs through syslog, so its lines are in the worker unit's journal. A failed pass
ends with ``bailing out!`` or ``Processing sync log file ... failed``; the lines before it in the
same pass may name the culprit: ``do_folders(): update failed: <mailbox>``, ``Promoting: MAILBOX
<m> -> USER <u>`` or ``IOERROR: user replication failed: ... userid=<u>``. Some failures name
nobody (a refused USER command says only "Unknown error"): then the supervisor bisects.

It also reads how the worker's session with the replica goes (``session_event``), from the
lines Cyrus 3.6 and 3.10 log around ``sync_connect`` (imap/sync_support.c, imap/backend.c):

- ``Destination supports #sieve mailbox`` (INFO) is logged right after every successful login
  to a 3.6+ replica, and ``Reprocessing sync log file`` only once connected: the login worked.
  Nothing else is logged by a healthy idle worker (cyrus-lab.md 4a).
- ``couldn't authenticate to backend server: <SASL error>`` (ERR): the replica refused the
  login (wrong ``<link>_sync_password`` or authname, no common mechanism, or the replica's
  password backend down: SASL reports them alike). sync_client then retries forever, 15 s,
  30 s, ... up to ``sync_reconnect_maxwait``, with the credentials it read at start, even
  ``-R -1`` (``replica_connect``); ``-o`` (connect once) only works from 3.10 on.
- ``connect(<host>) failed: <errno text>``, ``getaddrinfo(...) failed``, ``backend_login():
  couldn't read initial greeting``: no session at all; the same retries. Each failed attempt
  ends with ``Can not connect to server '<host>', retrying in <n> seconds`` on stderr, which
  systemd files in the same journal.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from .synclog import mailbox_user, userid

_UPDATE_FAILED = re.compile(r"do_folders\(\): update failed: (\S+) '(.*)'")
_PROMOTING = re.compile(r"Promoting: MAILBOX (\S+) -> USER (\S+)")
_USER_FAILED = re.compile(r"user replication failed: error=<([^>]*)> userid=<([^>]*)>")
_DO_USER_FAILED = re.compile(r"Error in sync_do_user\(([^)]*)\): bailing out!")
_NO_RESPONSE = re.compile(r"(\w+) received NO response: (.*)")
# The replica answered BAD: it is alive, it refused (a full disk on the replica looks like
# this on the master: "command=<MESSAGE> response=<BAD> errmsg=<IMAP_PROTOCOL_ERROR Failed to
# parse APPLY line>", and the pass ends in "Bad protocol", as a broken connection's does).
_BAD_RESPONSE = re.compile(r"received bad response: command=<(\w+)> response=<BAD>"
                           r" errmsg=<([^>]*)>")
_BAILING_OUT = re.compile(r"bailing out!")
_FILE_FAILED = re.compile(r"Processing sync log file \S+ failed")
_REPROCESSING = re.compile(r"Reprocessing sync log file")
# The connection to the replica broke (it died or restarted): Cyrus still promotes and names
# the users it was working on, but they are not to blame; the probe decides about the link.
_TRANSPORT = re.compile(r"zero length response|end of file reached|"
                        r"Connection reset|Broken pipe|LOGOUT received|Connection refused|"
                        r"Can not connect|IMAP_BYE_LOGOUT|shutting down")


# sync_client exit codes that mean "fix the configuration" (sysexits USAGE, SOFTWARE, CONFIG):
# running it again cannot help.
CONFIG_EXITS = frozenset({64, 70, 78})

_LOGGED_IN = re.compile(r"^Destination supports |^Reprocessing sync log file ")
_AUTH_FAILED = re.compile(r"couldn't authenticate to backend server: (.*)")
_NO_SESSION = re.compile(r"(connect\(.*\) failed: .*|getaddrinfo\(.*\) failed: .*|"
                         r"backend_login\(\): couldn't read initial greeting.*)")
_RETRYING = re.compile(r"Can not connect to server '([^']*)'")


class Session(enum.Enum):
    LOGGED_IN = "logged-in"        # the replica accepted the login
    REFUSED = "refused"            # the replica refused the login: retrying cannot fix it
    NO_SESSION = "no-session"      # no connection or no greeting: may heal by itself


@dataclass(frozen=True)
class SessionEvent:
    kind: Session
    cause: str = ""                # the sentence for status, naming what went wrong
    generic: bool = False          # says only that an attempt failed, not why


def session_event(message: str) -> SessionEvent | None:
    """What one worker log line says about its session with the replica, if anything."""
    message = message.strip()
    if _LOGGED_IN.search(message):
        return SessionEvent(Session.LOGGED_IN)
    m = _AUTH_FAILED.search(message)
    if m:
        return SessionEvent(Session.REFUSED, f"replica refused the sync login: {m.group(1)}")
    m = _NO_SESSION.search(message)
    if m:
        return SessionEvent(Session.NO_SESSION, f"cannot reach the replica: {m.group(1)}")
    m = _RETRYING.search(message)
    if m:
        return SessionEvent(Session.NO_SESSION, f"sync_client cannot connect to {m.group(1)}"
                            " and keeps retrying", generic=True)
    return None


@dataclass
class FailedPass:
    users: dict[str, str] = field(default_factory=dict)   # userid -> error as logged
    error: str = ""                                         # the pass's own error line
    transport: bool = False                                 # the connection broke, not a user


class FailureDetector:
    """Feed one link's worker log lines in order; ``feed`` returns a FailedPass when one ends."""

    def __init__(self):
        self.pending: dict[str, str] = {}
        self.last_error = ""
        self.reprocessing = 0     # consecutive passes over the same stuck log-run
        self.bailed_out = False   # "Processing ... failed" after "bailing out!" is the same pass
        self.transport = False    # this pass saw the connection to the replica break

    def feed(self, message: str) -> FailedPass | None:
        if _FILE_FAILED.search(message) and self.bailed_out:
            self.bailed_out = False      # the tail of the pass reported a moment ago
            return None
        if _TRANSPORT.search(message):
            self.transport = True
        if _REPROCESSING.search(message):
            self.reprocessing += 1
            self.bailed_out = False
            return None
        m = _UPDATE_FAILED.search(message)
        if m:
            user = mailbox_user(m.group(1).strip('"'))
            if user:
                self.pending[user] = f"update of {m.group(1)} failed: {self._why(m.group(2))}"
            return None
        m = _PROMOTING.search(message)
        if m:
            self.pending.setdefault(userid(m.group(2)), f"mailbox {m.group(1)} failed")
            return None
        m = _USER_FAILED.search(message) or _DO_USER_FAILED.search(message)
        if m:
            user, err = (m.group(2), m.group(1)) if m.re is _USER_FAILED else (m.group(1), "")
            self.pending[userid(user)] = self._why(err) or message
            if m.re is _USER_FAILED:
                return None
        m = _NO_RESPONSE.search(message) or _BAD_RESPONSE.search(message)
        if m:
            self.last_error = f"{m.group(1)} refused by the replica: {m.group(2)}"
            return None
        if _BAILING_OUT.search(message) or _FILE_FAILED.search(message):
            self.bailed_out = bool(_BAILING_OUT.search(message))
            failed = FailedPass(dict(self.pending), message.strip(), self.transport)
            self.pending, self.transport, self.last_error = {}, False, ""
            return failed
        return None

    def _why(self, error: str) -> str:
        """Cyrus's error for a user, with what the replica said when it said more."""
        if error and self.last_error:
            return f"{error} ({self.last_error})"
        return error or self.last_error

    def pass_succeeded(self) -> None:
        """The stuck log-run went away: the next failure starts a new count."""
        self.reprocessing = 0
        self.pending = {}
        self.transport = False
        self.last_error = ""
