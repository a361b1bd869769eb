"""The service entry point: a loop you can read in one screen.

Signal handlers only set a flag and poke a self-pipe; the loop waits in ``select`` (woken early
by signals, finished probes and control clients), runs one reconcile tick, reports it to systemd
and the status file, and pets the watchdog only after a completed tick, so a hung loop is killed.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from . import config as configmod
from .configload import ConfigProblem, load_checked
from .cyrus import procs as cyrus_procs
from .link import report
from .control import ControlServer
from .link.quarantine import crash_points
from .link.operator import answer
from .link.reconcile import Edges, LocalState, Reconciler
from .systemd.journal import Journal, JournalHandler
from .systemd.notify import Notifier
from .systemd.follow import JournalFollower
from .systemd.units import RESTART_JOBS
from .systemd.exitwatch import ExitWatch
from .cyrus.probe import Prober
from .commands import worker as worker_settings
from .link.lifecycle_store import LifecycleStore
from .link.quarantine_store import QuarantineStore
from .link.roles import RoleStore
from .paths import Instance
from . import preflight
from .link.strays import StrayChannels
from .link.hooks import Hooks
from .state import Holds, atomic_write

log = logging.getLogger("syncwarden")

TICK = 1.0   # seconds between reconcile ticks when nothing wakes the loop earlier
STATUS_REFRESH = 10.0
TICK_DRAINING = 0.1  # a drain pass ends whenever sync_client does: notice it promptly ...
# ... unless that end wakes the loop by itself (link/drain.py, the exit watch): a tick then
# only checks timeouts, and each costs the pass CPU it would use (D-Bus, files, STATUS=).
TICK_DRAIN_WATCHED = 0.5
TICK_SEEDING = 0.25  # likewise a seed's batch: the next one starts at the next tick
MIN_WAIT = 0.01      # the shortest wait in select: never a busy loop
EXTEND_WHILE_DRAINING = 30.0


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)


class Daemon:
    coordination = None     # coord/service.py, made in run() when coordination: is configured
    def __init__(self, config_path: Path | None = None, instance: Instance = Instance(),
                 systemd_factory=None, journal: Journal | None = None,
                 notifier: Notifier | None = None, clock=SystemClock(),
                 journal_reader=None, rival_scan=cyrus_procs.rival_sync_clients,
                 proc_root="/proc", log_handler: JournalHandler | None = None, etcd=None):
        self.instance = instance
        self.config_path = Path(config_path or instance.config)
        self.systemd_factory = systemd_factory
        self.journal = journal or Journal()
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.socket_path = instance.socket
        self.status_path = instance.status_file
        self.journal_reader = journal_reader   # tests pass a fake python3-systemd Reader
        self.rival_scan = rival_scan
        self.proc_root = proc_root         # where preflight looks for Cyrus masters
        self.log_handler = log_handler     # says how often rate-limited lines repeated
        self.stop_requests = 0
        self.problems: list[str] = []     # damaged state found at start, for status
        self.status_gid: int | None = None
        self.reload_requested = False
        self.restarting = False
        self.follower: JournalFollower | None = None
        self.strays = StrayChannels()
        self.control: ControlServer | None = None
        self.metrics = None                  # monitor/exporter.py, once metrics are configured
        self.etcd = etcd                     # tests pass a fake etcd (coord/etcd.py's calls)
        self._status_key, self._status_written = None, float("-inf")
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)

    # Signal handlers and probe threads only set flags and write one byte here.
    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake

    def request_stop(self, signum=None, frame=None) -> None:
        self.stop_requests += 1
        self.wake()

    def request_reload(self, signum=None, frame=None) -> None:
        self.reload_requested = True
        self.wake()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop, SIGHUP reloads. The kernel may deliver a signal to any
        thread (the probes', the journal reader's), and Python runs the handler in the main
        thread only once that thread wakes: the loop would sleep on in select for up to a
        tick (seen: a `systemctl stop` whose drain began 0.25 s late). With the wakeup fd,
        the C-level handler writes the signal's number to the loop's self-pipe in whichever
        thread it lands, and select returns at once."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

    def run(self) -> int:
        try:
            cfg, imapd = load_checked(self.config_path)
        except ConfigProblem as exc:
            first = str(exc).splitlines()
            self.journal.send("refusing to start: " + "; ".join(s.strip() for s in first), "err",
                              "config-rejected")
            print(exc, flush=True)
            return 2
        self._save_worker_settings(cfg, imapd)
        if threading.current_thread() is threading.main_thread():  # tests run us in a thread
            self.install_signal_handlers()
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
        systemd = self._systemd()
        prober = Prober(self.wake, clock=self.clock.monotonic)
        inst = self.instance
        holds = Holds(inst.holds_file)
        roles = RoleStore(inst.role_file)
        store = QuarantineStore(inst.quarantine_dir, clock=self.clock.wall)
        self._report_damage(holds, roles, store)
        follower = self.follower = JournalFollower(
            None, selector, self.clock.monotonic, inst.journal_cursor,
            **({"reader_factory": self.journal_reader} if self.journal_reader else {}))
        exits = ExitWatch(selector)
        coord = self.coordination = self._coordination(cfg)
        sup = Reconciler(cfg, imapd, Edges(systemd, prober, self.journal, self.clock, follower,
                                           self.rival_scan,
                                           hooks=Hooks(systemd, inst.name, self.clock),
                                           exits=exits, authority=coord,
                                           passes=worker_settings.PassFiles(inst)),
                         LocalState(holds, roles, store, inst.users_dir, inst.name,
                                    crash_points(inst.crash_flag), *self._lifecycle_state()))
        if coord is not None:
            # What the role wants, before the first round: a restarted master must keep its
            # key (not let it go as a replica would), and its first tick must know whether it
            # holds it, or it would stop the workers the last daemon left running.
            coord.wants_master = lambda: sup.role.is_master    # also while stopping: a
            coord.start()                                      # drain pushes
        for problem in sup.lifecycle.problems:      # found while the links were configured
            self.problems.append(problem)
            self.journal.send(f"damaged state: {problem}", "err", "state-damaged")
        follower.on_line = sup.feed_worker_log
        follower.watch(sup.watched_units())
        self.status_gid = configmod.control_gid(cfg)
        self.metrics = self._metrics(cfg)
        control = self.control = ControlServer(
            self.socket_path, self.status_gid, lambda req, admin: self._handle(sup, req),
            selector, clock=self.clock.monotonic)
        self.journal.send(f"syncwarden started: {len(cfg.links)} link(s) from {cfg.source},"
                          f" role {cfg.role}", "info", "daemon-started")
        self._preflight(cfg, imapd)
        ready_sent = False
        stopping = 0
        try:
            while True:
                if self.stop_requests > stopping:
                    if stopping == 0:   # first stop: drain, unless it is half a restart
                        self.notifier.stopping()
                        self._first_stop(sup, systemd)
                    else:               # a second stop: give up now; log-run stays whole
                        sup.drains.abort_all("aborted by a second stop request")
                    stopping = self.stop_requests
                if stopping and not sup.draining:
                    break
                if self.reload_requested:
                    self.reload_requested = False
                    try:
                        self._reload(sup)
                    except ValueError:
                        pass          # said in the journal; SIGHUP has nobody to answer
                follower.pump()
                if coord is not None and not self.stop_requests:
                    coord.before_tick(sup, systemd, self.proc_root)
                summary = sup.tick()
                follower.save()       # after the tick that acted on what was read
                if coord is not None:
                    coord.after_tick(sup, self.clock.monotonic())
                if stopping and not sup.draining:
                    # The last drain ended in that tick: a stop waits for nothing else. Only
                    # the metrics textfile, which outlives the daemon, learns the outcome.
                    if self.metrics is not None:
                        self.metrics.publish(self._status(sup, fresh=False), self.clock.wall())
                    break
                if sup.ready and not ready_sent:
                    self.notifier.ready()
                    ready_sent = True
                self.notifier.status(summary)
                doc = self._write_status(sup)
                if self.metrics is not None:
                    self.metrics.publish(doc or self._status(sup, fresh=False),
                                         self.clock.wall())
                self.notifier.watchdog()
                if self.log_handler is not None:
                    self.log_handler.release_due()
                if stopping:
                    # The hard ceiling is drain.timeout, enforced by each drain itself; this
                    # only keeps systemd's TimeoutStopSec= from cutting a working drain short.
                    self.notifier.extend_timeout(EXTEND_WHILE_DRAINING)
                self._wait(selector, sup)
                control.expire(self.clock.monotonic())
        finally:
            self.notifier.stopping()
            sup.close()
            control.close()
            if self.metrics is not None:
                self.metrics.close()
            prober.close()
            follower.close()
            exits.close()
            if coord is not None:
                coord.close(release=not self.restarting)
            self.journal.send(self._stopped_message(stopping, sup), "info", "daemon-stopped")
        return 0

    def _coordination(self, cfg: configmod.Config):
        """The etcd side (coord/), made only when configured: without ``coordination:``
        nothing of it is imported, and the daemon decides alone as it always did."""
        if cfg.coordination is None:
            return None
        from .coord.service import Coordination

        return Coordination(cfg.coordination, self.instance.name, self.journal, self.clock,
                            self.wake, **({"etcd": self.etcd} if self.etcd else {}))

    def _first_stop(self, sup: Reconciler, systemd) -> None:
        """SPEC Guarantee 2, refined: a stop that is the first half of a restart (``systemctl
        restart``, a package upgrade's restart) leaves the workers running, for the next
        daemon to adopt; any other stop, and a system shutdown, sends what is queued first.
        A drain an operator started is ended (its link stays held, as the drain would have
        left it): a restart must not wait up to drain.timeout."""
        job = self._own_job(systemd)
        if job in RESTART_JOBS:
            self.restarting = True
            sup.drains.abort_all("interrupted by a restart of syncwarden; drain again")
            log.info("stopping for a restart (systemd job %s): the workers keep running and"
                     " the next daemon adopts them; nothing is drained", job)
        else:
            sup.drain_all("because syncwarden is stopping")

    def _own_job(self, systemd) -> str:
        try:
            return systemd.job_of_pid(os.getpid())
        except Exception as exc:   # no answer: read it as a stop, which drains (the safe side)
            log.warning("cannot tell a restart from a stop (%s): draining every link", exc)
            return ""

    def _stopped_message(self, stopping: int, sup: Reconciler) -> str:
        if not stopping:
            return "syncwarden exiting on an error"
        if self.restarting:
            running = sum(1 for rt in sup.links.values() if rt.worker_running or rt.worker_ours)
            return f"syncwarden stopped for a restart, {running} worker(s) left running"
        return "syncwarden stopped"

    def _preflight(self, cfg, imapd) -> None:
        """What check-config would complain about on this host, said once (at start and on
        each reload); channels that nothing reads are shown in status with their backlog."""
        try:
            strays = preflight.stray_channels(cfg, imapd, self.proc_root)
        except OSError as exc:
            log.warning("cannot look for sync log channels nothing reads: %s", exc)
            strays = []
        self.strays.set(imapd, strays)
        for problem in preflight.problems(cfg, imapd, self.proc_root, strays=strays):
            log.warning("%s: %s", cfg.source, problem)

    def _save_worker_settings(self, cfg, imapd) -> None:
        """What workers need, so that they start without reading YAML (commands/worker.py)."""
        try:
            worker_settings.save_settings(self.instance, cfg, imapd)
        except OSError as exc:     # workers read the config themselves, a little slower
            log.warning("cannot leave the workers their settings: %s", exc)

    def _report_damage(self, holds: Holds, roles: RoleStore, store: QuarantineStore) -> None:
        """State that a crash or a hand left damaged was read the safe way by its owner
        (links held, role replica, records rebuilt): say so in the journal and in status."""
        record = roles.load()
        self.problems = [p for p in (holds.problem, record and record.problem) if p]
        self.problems += store.problems
        for problem in self.problems:
            self.journal.send(f"damaged state: {problem}", "err", "state-damaged")

    def _metrics(self, cfg: configmod.Config):
        """The exporter for ``cfg.metrics``; made when first configured, so that a daemon
        without metrics never loads prometheus_client."""
        wanted = cfg.metrics.listen is not None or cfg.metrics.textfile is not None
        if self.metrics is None and wanted:
            from .monitor.exporter import Exporter

            return Exporter(cfg.metrics, self.instance.state_dir, self.clock.monotonic)
        if self.metrics is not None:
            self.metrics.configure(cfg.metrics)
        return self.metrics

    def _lifecycle_state(self) -> tuple:
        """Seeds, freezes and retirements (link/lifecycle.py): their store, where a seed's
        mailbox list goes, and each link's last full check."""
        from .pair.lastcheck import load_last     # not pair.check: it imports ssl (libcrypto)

        inst = self.instance
        return (LifecycleStore(inst.lifecycle_file, inst.seed_dir), inst.runtime_dir / "seed",
                lambda link: load_last(link, inst.state_dir))

    def _systemd(self):
        if self.systemd_factory is not None:
            return self.systemd_factory()
        from .systemd.units import Systemd

        return Systemd()

    @staticmethod
    def _pace(sup: Reconciler) -> float:
        """Seconds to the next tick when nothing wakes the loop earlier."""
        if sup.draining:
            return TICK_DRAIN_WATCHED if sup.drains.watched() else TICK_DRAINING
        return TICK_SEEDING if sup.lifecycle.busy else TICK

    def _wait(self, selector, sup: Reconciler) -> None:
        """Until something happens (a signal, a probe's news, a client, a journal line, the
        end of a process a drain waits for) or the next tick is due. Probes that come due
        meanwhile are started without a tick."""
        pace = self._pace(sup)
        if self.coordination is not None and self.coordination.busy:
            pace = min(pace, TICK_DRAINING)     # each step of a switchover waits for a tick
        tick_at = self.clock.monotonic() + pace
        while True:
            now = self.clock.monotonic()
            until = min(tick_at, sup.next_probe_due(now))
            ready = selector.select(max(MIN_WAIT, until - now))
            for key, _ in ready:
                key.data()
            if ready or self.clock.monotonic() >= tick_at:
                return
            sup.start_due_probes()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _reload(self, sup: Reconciler) -> str:
        """Read the config again and apply every setting; ValueError (with every problem)
        when it is rejected, and the running configuration stays. From SIGHUP, or from the
        control socket's ``reload`` (``syncwarden reload``, the units' ExecReload=), which
        answers the outcome so that ``systemctl reload`` fails on a bad file."""
        self.notifier.reloading()
        try:
            cfg, imapd = load_checked(self.config_path)
        except ConfigProblem as exc:
            self.notifier.ready()
            lines = [s.strip() for s in str(exc).splitlines()]
            self.journal.send("reload rejected, keeping the running configuration: "
                              + "; ".join(lines), "err", "config-rejected")
            raise ValueError(f"reload rejected, the running configuration stays: {exc}"
                             ) from None
        if cfg.coordination != sup.config.coordination:
            log.warning("coordination: changed in %s: it takes effect when syncwarden"
                        " restarts", cfg.source)
            cfg = configmod.replace(cfg, coordination=sup.config.coordination)
        self._save_worker_settings(cfg, imapd)
        changes = sup.reconfigure(cfg, imapd)
        self.status_gid = configmod.control_gid(cfg)
        if self.control is not None:
            self.control.set_group(self.status_gid)
        if self.follower is not None:
            self.follower.watch(sup.watched_units())
        self.metrics = self._metrics(cfg)
        self._preflight(cfg, imapd)
        self._status_key = None         # rewritten now: its group may have changed
        self.notifier.ready()
        said = "; ".join(f"{what}: {', '.join(names)}" for what, names in changes.items()
                         if names)
        done = (f"configuration reloaded from {cfg.source}: {len(cfg.links)} link(s)"
                + (f"; {said}" if said else "; no link changed"))
        self.journal.send(done, "info", "config-reloaded")
        return done

    def _handle(self, sup: Reconciler, req: dict):
        """One control request (already validated by the control socket): status and reload
        are the daemon's own, the rest goes to the operator (link/operator.py)."""
        if req["cmd"] == "status":
            return self._status(sup)
        if req["cmd"] == "reload":
            if self.stop_requests:
                raise ValueError("syncwarden is stopping: nothing to reload")
            return self._reload(sup)
        return answer(sup, req)

    def _status(self, sup: Reconciler, fresh: bool = True) -> dict:
        doc = {**sup.status(fresh), "problems": list(self.problems),
               "unsupervised_channels": self.strays.as_json(self.clock.monotonic(),
                                                            self.clock.wall())}
        if self.coordination is not None:
            doc["coordination"] = self.coordination.status(self.clock.monotonic())
        return doc

    def _write_status(self, sup: Reconciler) -> dict | None:
        """The status file, when it changed, and at least every STATUS_REFRESH seconds so
        that its written_at shows the daemon alive. Returns the document when it built it."""
        strays = self.strays.as_json(self.clock.monotonic(), self.clock.wall())
        key = (sup.status_key(), tuple(self.problems), strays,
               self.coordination and self.coordination.status_key())
        now = self.clock.monotonic()
        if key == self._status_key and now - self._status_written < STATUS_REFRESH:
            return None
        doc = self._status(sup, fresh=False)     # right after the tick that made the views
        written = {**doc, "written_at": self.clock.wall(), "pid": os.getpid()}
        try:
            # control.group may read it, like the socket; nobody else (users, errors)
            atomic_write(self.status_path, json.dumps(written).encode() + b"\n", 0o640,
                         self.status_gid)
            self._status_key, self._status_written = key, now
        except OSError as exc:
            log.warning("cannot write %s: %s", self.status_path, exc)
        return doc


def main(config_path: Path | None, instance: Instance) -> int:
    journal = Journal()
    handler = JournalHandler(journal)
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # transitions narrates every callback at INFO; our own journal entry per change is enough
    logging.getLogger("transitions").setLevel(logging.WARNING)
    rc = Daemon(config_path, instance, journal=journal, log_handler=handler).run()
    # `systemctl stop` returns once this process has exited, and a drain's last pass is
    # followed by nothing else: skip the interpreter's teardown of every module and thread.
    # Nothing is left to finish: state files are written and synced as they change, journal
    # entries are sent as they happen, run() closed the sockets.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
