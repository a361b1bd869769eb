"""``syncwarden failover``: the soft failover of "Making Replication Robust" (goal c).

Stop accepting mail, send every queued entry, prove in "paranoid mode" that every mailbox of
every user matches on both sides, and only then record that this host is a replica, so that no
daemon here ever pushes to the new master. Each step refuses rather than guesses: a link that
did not drain or does not match leaves the role alone and says why.

"Mail is stopped" means no Cyrus process of this instance runs, found from the instance itself
(cyrus/procs.py: command lines, parents, session files, listening sockets), not from the name
of a unit: the same master may run under any unit, or none. It is checked before the drain and
again just before the role changes, when the verification's own private Cyrus is gone.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..control import ControlError, request, wait_for_drains
from ..cyrus import procs as cyrus_procs
from ..exits import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from . import check
from .credentials import CredentialsError
from .imapclient import ImapError

VERIFY_UNIT = "syncwarden-verify-imap"
LOCAL = ("localhost", "127.0.0.1", "::1")

# With the mail services stopped the master has no IMAP server, yet the verification reads it
# over IMAP: run Cyrus's master with nothing but imapd, on the configured loopback port.
VERIFY_CYRUS_CONF = """\
# written by syncwarden failover: IMAP only, loopback only, for the verification
SERVICES {{
  imap cmd="imapd -C {conf}" listen="{host}:{port}" prefork=0
}}
"""


def cyrus_running(cfg, imapd, proc_root="/proc") -> str:
    """The instance's running Cyrus processes, as one line; "" when there are none."""
    found = cyrus_procs.service_processes(imapd, cyrus_procs.bin_dirs(cfg.cyrus.master),
                                          proc_root)
    return "; ".join(p.describe() for p in found)


def drain_all(socket, out) -> dict[str, dict]:
    """Drain every link through the daemon; {link: last_drain} once all are over."""
    started = time.time()
    answer = request("drain", path=socket, all=True, link=None)
    if not answer.get("ok"):
        raise ControlError(answer.get("error"))
    print(f"failover: {answer['result']}", file=out, flush=True)
    return wait_for_drains(socket, started)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def master_imap(cfg, out):
    """An IMAP server on the master for the verification: the running one, or a private
    IMAP-only Cyrus master run as a transient unit while the mail services are stopped."""
    ep = cfg.check.master
    if _port_open(ep.host, ep.port) or ep.host not in LOCAL:
        yield
        return
    rundir = Path("/run/syncwarden/verify")
    rundir.mkdir(parents=True, exist_ok=True)
    host = "[::1]" if ep.host == "::1" else "127.0.0.1"
    (rundir / "cyrus.conf").write_text(VERIFY_CYRUS_CONF.format(
        conf=cfg.cyrus.imapd_conf, host=host, port=ep.port))
    master = cfg.cyrus.master        # master or cyrus-master, wherever it is (cyrus/layout.py)
    subprocess.run(["systemd-run", f"--unit={VERIFY_UNIT}", "--quiet", "--collect",
                    "--property=User=cyrus", "--property=Group=mail",
                    "--property=RuntimeDirectory=syncwarden-verify",
                    str(master), "-C", str(cfg.cyrus.imapd_conf), "-M",
                    str(rundir / "cyrus.conf"), "-p", "/run/syncwarden-verify/master.pid"],
                   check=True)
    print(f"failover: started an IMAP-only Cyrus on {host}:{ep.port} to read the master",
          file=out, flush=True)
    try:
        deadline = time.monotonic() + 30
        while not _port_open(ep.host, ep.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        yield
    finally:
        subprocess.run(["systemctl", "stop", f"{VERIFY_UNIT}.service"], check=False)


def verify(cfg, imapd, link: str) -> tuple[bool, str]:
    """(matched, detail): per mailbox UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, MESSAGES, MAILBOXID
    and the sync CRC, on every user of both sides; after a drain nothing may differ at all."""
    try:
        report = check.run(check.sides_for(cfg, link), imapd.sync_dir(link), deep=False,
                           parallel=cfg.check.parallel, progress_out=None)
    except (CredentialsError, ImapError, OSError) as exc:
        return False, f"cannot verify: {exc}"
    if report.errors:
        return False, f"cannot verify: {report.errors[0]}"
    if report.differences:
        d = report.differences[0]
        return False, (f"{len(report.differences)} difference(s), e.g. {d.category}"
                       f" {d.user} {d.mailbox or ''}".rstrip())
    return True, f"{report.users} users, {report.mailboxes} mailboxes match"


def run(args, cfg, imapd, out=sys.stdout, proc_root="/proc") -> int:
    running = cyrus_running(cfg, imapd, proc_root)
    if running and not args.force:
        print(f"failover: refused: Cyrus still runs for {imapd.path}, so mail may still be"
              f" accepted here: {running}; stop it first (or use --force)", file=sys.stderr)
        return EXIT_PROBLEM
    if running:
        print(f"failover: --force: going on although Cyrus still runs for {imapd.path}"
              f" (mail accepted from now on stays here): {running}", file=sys.stderr)
    try:
        drains = drain_all(args.socket, out)
    except ControlError as exc:
        print(f"failover: the daemon must run to drain the links: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    ok = True
    with master_imap(cfg, out):
        for link in cfg.links:
            d = drains.get(link)
            if d is None or not d["drained"]:
                ok = False
                why = d["message"] if d else "not drained"
                left = d["entries_left"] if d else "?"
                print(f"{link}: NOT DRAINED: {why}; {left} entries left", file=out)
                continue
            matched, detail = verify(cfg, imapd, link)
            ok &= matched
            print(f"{link}: drained in {d['duration_seconds']}s; "
                  + ("verified: " if matched else "MISMATCH: ") + detail, file=out)
    if ok and not args.force:
        running = cyrus_running(cfg, imapd, proc_root)
        if running:
            ok = False
            print(f"failover: Cyrus started again for {imapd.path} meanwhile: {running}",
                  file=out)
    if not ok:
        print("failover: incomplete; the role stays master and the links stay held"
              " (syncwarden resume LINK to go on replicating)", file=out)
        return EXIT_PROBLEM
    answer = request("demote", path=args.socket)
    if not answer.get("ok"):
        print(f"failover: demote refused: {answer.get('error')}", file=sys.stderr)
        return EXIT_PROBLEM
    print("\n".join(answer["result"]), file=out)
    print("failover: done; this host is now a replica and will start no workers", file=out)
    return EXIT_OK
