"""``syncwarden move USER... --to STORE``: move users from this instance to another store.

Each user's move is workflow.Move against edges.CyrusEdges, its state in
``STATE_DIR/moves/USER.json`` (so a second run resumes, and ``status`` shows it); users run
``--parallel`` at a time. Exit 0 when every user was moved, 1 when any rolled back or failed
(the summary says which and why), 2 for usage and configuration errors.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..cyrus import imapdconf
from ..exits import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from ..move import files, workflow
from ..move.edges import CyrusEdges
from ..systemd.journal import Journal

MAX_PARALLEL = 32


def read_users(args) -> tuple[list[str], list[str]]:
    """(users, problems): the command line's, then --from-file's (one per line, # comments),
    each once, in order."""
    users, problems = list(args.users or []), []
    if args.from_file:
        try:
            text = Path(args.from_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return [], [f"--from-file {args.from_file}: cannot read:"
                        f" {getattr(exc, 'strerror', None) or exc}"]
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                why = files.check_user(line)
                if why:
                    problems.append(f"{args.from_file}: line {n}: {why}")
                users.append(line)
    problems += [why for u in args.users or [] if (why := files.check_user(u))]
    seen, unique = set(), []
    for u in users:
        if u not in seen:
            seen.add(u)
            unique.append(u)
    if not unique and not problems:
        problems.append("no users: name them, or give --from-file")
    return unique, problems


def store_problems(cfg, imapd) -> list[str]:
    """What makes a configured store unusable from here (check-config; the daemon does not
    use stores, so they never stop it): no channel to its sync_server in this instance's
    imapd.conf, sync_try_imap left on for it, its own imapd.conf unreadable."""
    problems = []
    for store in cfg.stores.values():
        path, ch = f"stores.{store.name}", store.channel
        if imapd.get("sync_host", ch) is None:
            problems.append(f"{path}.channel: {imapd.path} sets neither {ch}_sync_host nor"
                            f" sync_host: sync_client -n {ch} cannot reach the store")
        elif imapd.flag("sync_try_imap", True, ch):
            problems.append(f"{path}.channel: {imapd.path} leaves sync_try_imap on for {ch};"
                            f" set '{ch}_sync_try_imap: no' (or sync_try_imap: no)")
        try:
            imapdconf.load(store.imapd_conf)
        except imapdconf.ImapdConfError as exc:
            problems.append(f"{path}.imapd_conf: {exc}")
    return problems


def source_name(cfg, instance) -> str:
    """This store's name for the hook: the store whose imapd.conf is this instance's, else
    the instance's name."""
    for store in cfg.stores.values():
        if Path(store.imapd_conf) == Path(cfg.cyrus.imapd_conf):
            return store.name
    return instance.name


def cmd_move(args, journal=None, edges_factory=CyrusEdges, clock=time.time,
             euid=os.geteuid) -> int:
    from ..configload import ConfigProblem, load_checked

    if not 1 <= args.parallel <= MAX_PARALLEL:
        print(f"syncwarden move: --parallel {args.parallel}: expected 1-{MAX_PARALLEL}",
              file=sys.stderr)
        return EXIT_USAGE
    users, problems = read_users(args)
    if problems:
        print("syncwarden move: " + "\n  ".join(problems), file=sys.stderr)
        return EXIT_USAGE
    try:
        cfg, imapd = load_checked(args.config)
    except ConfigProblem as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    store = cfg.stores.get(args.to)
    if store is None:
        print(f"syncwarden move: --to {args.to}: no such store (stores:"
              f" {', '.join(cfg.stores) or 'none configured'})", file=sys.stderr)
        return EXIT_USAGE
    try:
        target_imapd = imapdconf.load(store.imapd_conf)
    except imapdconf.ImapdConfError as exc:
        print(f"syncwarden move: stores.{store.name}.imapd_conf: {exc}", file=sys.stderr)
        return EXIT_USAGE
    source = source_name(cfg, args.instance)
    if source == store.name:
        print(f"syncwarden move: --to {store.name}: that is this store", file=sys.stderr)
        return EXIT_USAGE
    edges = edges_factory(cfg, imapd, store, target_imapd, instance=args.instance.name,
                          program=_program())
    if args.dry_run:
        for user in users:
            plan = workflow.Plan(user, source, store.name, cfg.move.lock_timeout)
            print(f"move {user}: {source} -> {store.name}")
            print("\n".join("  " + line for line in workflow.describe(
                plan, edges.target_replicas(), cfg.move.switch_hook)))
        return EXIT_OK
    if euid() != 0:
        print("syncwarden move: needs root (it runs cyr_deny and sync_client as the cyrus"
              " user, the switch hook as root, and keeps its state in root's directory)",
              file=sys.stderr)
        return EXIT_PROBLEM
    if not cfg.move.switch_hook:
        print(f"{cfg.source}: move.switch_hook: required to move users (the command that"
              " switches a user's routing)", file=sys.stderr)
        return EXIT_USAGE
    run = _Runner(args.state_dir, edges, cfg.move.lock_timeout, source, store.name,
                  journal or Journal(), clock, sys.stderr, phases_shown=len(users) == 1)
    with ThreadPoolExecutor(max_workers=min(args.parallel, len(users))) as pool:
        results = list(pool.map(run.one, users))
    if args.json:
        print(json.dumps({"store": store.name, "source": source, "moves": results}, indent=2))
    else:
        print(summary_table(results))
    return EXIT_OK if all(r["result"] == workflow.DONE for r in results) else EXIT_PROBLEM


def _program() -> str:
    """This syncwarden's launcher, for the guard timer to run (a checkout's, a package's)."""
    argv0 = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return argv0 if os.path.basename(argv0) == "syncwarden" else "syncwarden"


def cmd_move_expire(args, journal=None, edges_factory=CyrusEdges, clock=time.time) -> int:
    """The guard timer's command: if the user is still locked past its move's deadline and no
    move process runs (one that runs holds the user's lock and keeps the deadline itself),
    roll the move back (before the switch) or finish it (after: unlock on the target, sync
    the replicas). Exit 0 whether or not there was anything to do."""
    from ..configload import ConfigProblem, load_checked

    state = files.load(args.state_dir, args.user)
    if state is None or state.get("locked_at") is None or state.get("unlocked_at") is not None:
        return EXIT_OK
    lock = files.UserLock(args.state_dir, args.user)
    try:
        if not lock.acquire():
            print(f"a move of {args.user} is running: it keeps its own deadline")
            return EXIT_OK
        try:
            cfg, imapd = load_checked(args.config)
        except ConfigProblem as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        store = cfg.stores.get(state["target"])
        if store is None:
            print(f"move-expire {args.user}: store {state['target']} is no longer configured;"
                  f" unlock by hand: cyr_deny -C {cfg.cyrus.imapd_conf} -a {args.user}",
                  file=sys.stderr)
            return EXIT_PROBLEM
        try:
            target_imapd = imapdconf.load(store.imapd_conf)
        except imapdconf.ImapdConfError as exc:
            print(f"move-expire {args.user}: stores.{store.name}.imapd_conf: {exc}",
                  file=sys.stderr)
            return EXIT_USAGE
        edges = edges_factory(cfg, imapd, store, target_imapd, instance=args.instance.name,
                              program=_program())
        plan = workflow.Plan(args.user, state["source"], state["target"], cfg.move.lock_timeout)
        run = _Runner(args.state_dir, edges, cfg.move.lock_timeout, state["source"],
                      state["target"], journal or Journal(), clock, sys.stdout)
        workflow.Move(state, plan, edges, clock, lambda st: files.save(args.state_dir, st),
                      run.event).expire()
        return EXIT_OK
    finally:
        lock.close()


class _Runner:
    def __init__(self, state_dir, edges, lock_timeout, source, target, journal, clock, out,
                 phases_shown=True):
        self.state_dir, self.edges, self.lock_timeout = state_dir, edges, lock_timeout
        self.source, self.target, self.journal, self.clock = source, target, journal, clock
        # One user: each phase on the terminal as it ends; many: how each move ended (the
        # phases are in the journal either way).
        self.out, self.printing, self.phases_shown = out, threading.Lock(), phases_shown

    def one(self, user: str) -> dict:
        lock = files.UserLock(self.state_dir, user)
        try:
            if not lock.acquire():
                return _outcome({"user": user, "result": workflow.FAILED,
                                 "error": "another syncwarden move of this user is running",
                                 "phases": {}})
            plan = workflow.Plan(user, self.source, self.target, self.lock_timeout)
            state = files.load(self.state_dir, user)
            if state and state.get("result") == workflow.DONE:
                # This store's copy is stale since then: moving it again would overwrite the
                # user's newer mail on the store that serves it now.
                return _outcome({**state, "result": workflow.FAILED, "phases": {},
                                 "error": f"already moved to {state['target']}"
                                 f" ({_when(state['updated'])}): this store's copy is stale;"
                                 f" remove {files.state_path(self.state_dir, user)} to move"
                                 " it anyway"})
            if state is None or state.get("result") in workflow.FINISHED \
                    or state.get("target") != self.target:
                if state and state.get("result") not in workflow.FINISHED:
                    return _outcome({**state, "result": workflow.FAILED, "error":
                                     f"an unfinished move to {state.get('target')} is"
                                     " recorded: run it again with that --to"})
                state = workflow.new_state(plan, self.clock())
            move = workflow.Move(state, plan, self.edges, self.clock,
                                 lambda st: files.save(self.state_dir, st), self.event)
            try:
                return _outcome(move.run())
            except OSError as exc:     # the state file: the guard timer ends a lock
                return _outcome({**state, "result": workflow.FAILED, "error":
                                 f"cannot record the move's state: {exc}"})
        finally:
            lock.close()

    def event(self, kind: str, st: dict, **detail) -> None:
        fields = dict(SYNCWARDEN_USER=st["user"], SYNCWARDEN_SOURCE=st["source"],
                      SYNCWARDEN_TARGET=st["target"])
        who = f"move {st['user']} {st['source']} -> {st['target']}"
        if kind == "started":
            text, prio = f"{who}: started at {st['phase']}", "notice"
        elif kind == "phase":
            text = f"{who}: {detail['phase']} done in {detail['seconds']:.2f}s"
            text += f" ({detail['detail']})" if detail["detail"] else ""
            prio = "info"
            fields.update(SYNCWARDEN_PHASE=detail["phase"],
                          SYNCWARDEN_DURATION=f"{detail['seconds']:.3f}")
        else:
            cp = workflow.critical_path(st)
            text = f"{who}: {st['result']}" + (f", critical path {cp:.2f}s" if cp else "") + \
                (f": {st['error']}" if st.get("error") else "") + \
                "".join(f"; {w}" for w in st.get("warnings", []))
            prio = "notice" if st["result"] == workflow.DONE else "err"
            fields.update(SYNCWARDEN_RESULT=st["result"],
                          SYNCWARDEN_CRITICAL_PATH=f"{cp:.3f}" if cp is not None else None)
        self.journal.send(text, prio, f"move-{kind}", **fields)
        if kind == "finished" or self.phases_shown:
            with self.printing:
                print(text, file=self.out, flush=True)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _outcome(st: dict) -> dict:
    """One user's line of the report (JSON and table)."""
    cp = workflow.critical_path(st)
    return {"user": st["user"], "result": st.get("result") or workflow.FAILED,
            "phase": st.get("failed_phase") or st.get("phase"),
            "critical_path_seconds": round(cp, 3) if cp is not None else None,
            "phases": {k: st["phases"][k]["seconds"] for k in workflow.PHASES
                       if k in st.get("phases", {})},
            "error": st.get("error"), "warnings": st.get("warnings", [])}


def summary_table(results: list[dict]) -> str:
    rows = [("USER", "RESULT", "CRITICAL PATH", "TOTAL", "DETAIL")]
    for r in results:
        cp = r["critical_path_seconds"]
        detail = r["error"] or "; ".join(r["warnings"]) or ""
        rows.append((r["user"], r["result"], f"{cp:.2f}s" if cp is not None else "-",
                     f"{sum(r['phases'].values()):.1f}s", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4]
             for row in rows]
    moved = sum(r["result"] == workflow.DONE for r in results)
    lines.append(f"{moved} of {len(results)} user(s) moved")
    return "\n".join(x.rstrip() for x in lines)
