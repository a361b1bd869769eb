"""The side effects of a user move, each behind one small method (workflow.py calls them).

Every command line comes from cyrus/commands.py; the session scan from cyrus/sessions.py; the
deep comparison from pair/compare.py through pair/imapclient.py, as `syncwarden check` reads a
pair.
Commands run as the cyrus user (runuser), the switch hook as root with /bin/sh.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..cyrus import commands, failures, sessions
from ..cyrus.imapdconf import ImapdConf
from ..pair import compare, credentials
from ..pair.imapclient import AdminView, ImapError, read_user
from .workflow import EdgeError

ADMIN_TIMEOUT = 30.0      # seconds for a cyr_deny outside the lock's deadline
GUARD_PREFIX = "syncwarden-move-guard"
# What a locked user's clients are told (cyr_deny -m); also how the verify recognises that it
# read through a locked service.
DENY_MESSAGE = "moving to another store, try again in a minute"
TERM_GRACE = 2.0          # seconds a session has to exit after SIGTERM before SIGKILL
POLL = 0.05


def lock_services(verify_service: str | None) -> str:
    """cyr_deny's -s: every service, except the one the deep check reads through. The first
    pattern that matches the service decides, and userdeny() tries them from the left (its
    comment says "right to left", its tok_next() loop goes left to right: imap/userdeny_db.c),
    so the exception comes first."""
    return f"!{verify_service},*" if verify_service else "*"


def _tail(text: str) -> str:
    lines = [x.strip() for x in (text or "").splitlines() if x.strip()]
    return lines[-1][:300] if lines else "no output"


class Runner:
    """Runs a command with a timeout; failures as EdgeError naming the command. ``give_up(line)``
    may read its stderr as it comes and return why to stop it early (a sync_client that cannot
    connect retries for ever in 3.6, where ``-o`` does nothing: cyrus/failures.py)."""

    def __call__(self, argv: list[str], timeout: float | None, what: str,
                 env: dict | None = None, give_up=None) -> str:
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env,
                                 start_new_session=True)
        except OSError as exc:
            raise EdgeError(f"{what}: {exc.strerror}: {argv[0]}") from None
        lines, reason = [], []

        def read_stderr():
            for line in p.stderr:
                lines.append(line)
                why = give_up(line) if give_up else None
                if why and not reason:
                    reason.append(why)
                    _kill(p)
        stdout: list[str] = []
        readers = [threading.Thread(target=read_stderr, daemon=True),
                   threading.Thread(target=lambda: stdout.append(p.stdout.read()), daemon=True)]
        for t in readers:
            t.start()
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(p)
            p.wait()
            raise EdgeError(f"{what}: no answer within {timeout:.1f}s") from None
        finally:
            for t in readers:
                t.join(5)
        out = "".join(stdout)
        if reason:
            raise EdgeError(f"{what}: {reason[0]}")
        if p.returncode != 0:
            raise EdgeError(f"{what}: exit {p.returncode}: {_tail(''.join(lines) or out)}")
        return out


def _kill(p) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _unreachable(line: str) -> str | None:
    """Why to stop a sync_client at once: its target refused the login or cannot be reached
    (it would retry for minutes)."""
    event = failures.session_event(line)
    if event is not None and event.kind is not failures.Session.LOGGED_IN:
        return event.cause
    return None


class CyrusEdges:
    """A move from this instance (``imapd``) to one store, on this host."""

    def __init__(self, cfg, imapd: ImapdConf, store, target_imapd: ImapdConf, run=None,
                 proc_root: Path = Path("/proc"), kill=os.kill, clock=time.monotonic,
                 sleep=time.sleep, instance: str = "default", program: str = "syncwarden"):
        self.cfg, self.imapd, self.store, self.target_imapd = cfg, imapd, store, target_imapd
        self.instance, self.program = instance, program
        self.run = run or Runner()
        self.bin_dir = Path(cfg.cyrus.sync_client).parent
        self.proc_root, self.kill, self.clock, self.sleep = proc_root, kill, clock, sleep
        self.services = lock_services(cfg.move.verify_service)

    # --- locks -------------------------------------------------------------------------------

    def _deny(self, conf: Path, user: str, timeout, where: str) -> None:
        argv = commands.cyr_deny(self.bin_dir, conf, user, services=self.services,
                                 message=DENY_MESSAGE)
        self.run(argv, timeout or ADMIN_TIMEOUT, f"cyr_deny {user} on {where}")

    def _allow(self, conf: Path, user: str, where: str) -> None:
        self.run(commands.cyr_deny(self.bin_dir, conf, user, allow=True), ADMIN_TIMEOUT,
                 f"cyr_deny -a {user} on {where}")

    def deny_target(self, user: str) -> None:
        self._deny(self.store.imapd_conf, user, None, self.store.name)

    def allow_target(self, user: str) -> None:
        self._allow(self.store.imapd_conf, user, self.store.name)

    def deny_source(self, user: str, timeout) -> None:
        self._deny(self.imapd.path, user, timeout, "this store")

    def allow_source(self, user: str) -> None:
        self._allow(self.imapd.path, user, "this store")

    # --- sessions ------------------------------------------------------------------------------

    def _live(self, user: str) -> list[int]:
        return [s.pid for s in sessions.user_sessions(self.imapd, user, self.proc_root)]

    def end_sessions(self, user: str, timeout) -> int:
        """SIGTERM each session of the user still there after cyr_deny, SIGKILL what
        outlives TERM_GRACE; the number ended."""
        ended, sig = set(), signal.SIGTERM
        limit = self.clock() + min(timeout or TERM_GRACE * 2, TERM_GRACE * 2)
        grace = self.clock() + TERM_GRACE
        while True:
            pids = self._live(user)
            if not pids:
                return len(ended)
            if self.clock() >= limit:
                raise EdgeError(f"{len(pids)} session(s) of {user} still running: pid(s)"
                                f" {', '.join(map(str, pids))}")
            if self.clock() >= grace:
                sig = signal.SIGKILL
            for pid in pids:
                if pid not in ended or sig == signal.SIGKILL:
                    try:
                        self.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                    ended.add(pid)
            self.sleep(POLL)

    # --- syncs ---------------------------------------------------------------------------------

    def sync_to_target(self, user: str, timeout) -> None:
        argv = commands.user_to(self.cfg.cyrus.sync_client, self.imapd.path, self.store.channel,
                                user)
        self.run(argv, timeout, f"sync_client -n {self.store.channel} -u {user}",
                 give_up=_unreachable)

    def target_replicas(self) -> list[str]:
        return [c for c in self.target_imapd.channels if c is not None]

    def replicate(self, user: str) -> list[str]:
        """The user from the target to each of its replicas: the target's sync_server logged
        nothing of the move to its channels (docs/moves.md)."""
        done = []
        for channel in self.target_replicas():
            argv = commands.user_to(self.cfg.cyrus.sync_client, self.store.imapd_conf, channel,
                                    user)
            self.run(argv, None, f"sync_client -C {self.store.imapd_conf} -n {channel}"
                     f" -u {user}", give_up=_unreachable)
            done.append(channel)
        return done

    # --- verify --------------------------------------------------------------------------------

    def verify(self, user: str, timeout) -> list[str]:
        """Every difference (compare.py's wording) between the user on this store and on the
        target: mailboxes, UIDs, GUIDs, flags. ImapError is a failure of the verify."""
        try:
            logins = credentials.load(self.cfg.check.credentials, ["master", self.store.name])
        except credentials.CredentialsError as exc:
            raise EdgeError(str(exc)) from None
        sides = ((self.cfg.check.master, logins["master"]),
                 (self.store.imap, logins[self.store.name]))

        def read(side):
            endpoint, login = side
            admin = AdminView(endpoint, login)
            try:
                names = admin.users(only=user).get(user)
            finally:
                admin.close()
            return read_user(endpoint, login, user, names, True) if names else None
        # Both stores at once: the user is locked on both, so neither can change meanwhile,
        # and the verify is most of the critical path for a big mailbox.
        try:
            with ThreadPoolExecutor(2) as pool:
                views = list(pool.map(read, sides))
        except ImapError as exc:
            hint = ""
            if DENY_MESSAGE in str(exc):
                hint = (f" (the lock ended the verify's session: check.master and"
                        f" stores.{self.store.name}.imap must name the port of"
                        f" move.verify_service, {self.cfg.move.verify_service or 'unset'})")
            raise EdgeError(f"verify: {exc}{hint}") from None
        if views[0] is None:
            raise EdgeError(f"{user} has no mailboxes on this store: nothing to move")
        return [f"{d.mailbox or d.user}: {d.detail}"
                for d in compare.compare_user(user, views[0], views[1], pending=False)]

    # --- the switch ----------------------------------------------------------------------------

    def switch(self, user: str, source: str, target: str, timeout) -> None:
        hook = self.cfg.move.switch_hook
        if not hook:
            raise EdgeError("move.switch_hook is not configured")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYNCWARDEN_USER": user,
               "SYNCWARDEN_SOURCE": source, "SYNCWARDEN_TARGET": target}
        self.run(["/bin/sh", "-c", hook + ' "$@"', "switch-hook", user, source, target],
                 timeout or ADMIN_TIMEOUT, "move.switch_hook", env=env)

    # --- the guard -----------------------------------------------------------------------------

    def guard_unit(self, user: str) -> str:
        """The timer's name: the instance, and a digest of the userid (any characters)."""
        digest = hashlib.sha256(user.encode()).hexdigest()[:16]
        return f"{GUARD_PREFIX}-{self.instance}-{digest}"

    def guard(self, user: str, seconds: float) -> None:
        """A transient systemd timer that runs ``syncwarden move-expire USER`` at the lock's
        deadline: if this process dies while the user is locked, that rolls the move back.
        RemainAfterElapse=no: an elapsed timer does not keep the name taken."""
        unit = self.guard_unit(user)
        self.unguard(user, quiet=True)
        self.run(["systemd-run", f"--unit={unit}", "--quiet", "--collect",
                  f"--on-active={max(seconds, 1.0):.3f}s",
                  "--timer-property=AccuracySec=100ms",
                  "--timer-property=RemainAfterElapse=no", "--",
                  self.program, "-i", self.instance, "move-expire", user],
                 ADMIN_TIMEOUT, f"the lock's guard timer {unit}")

    def unguard(self, user: str, quiet: bool = False) -> None:
        try:
            self.run(["systemctl", "stop", f"{self.guard_unit(user)}.timer"], ADMIN_TIMEOUT,
                     "stopping the lock's guard timer")
        except EdgeError:
            if not quiet:
                raise
