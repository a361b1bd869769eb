"""The command line an admin can trust: options anywhere, help everywhere, asking before
destroying, waiting with progress, and one line when the daemon goes away."""

import argparse
import io
import json
import socket
import threading

import pytest

from supervisor.commands import ask, cli
from supervisor.commands.cli import build_parser, main

from .test_cli import write


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_global_options_before_or_after_the_command(tmp_path, capsys):
    cfg = write(tmp_path)
    sock = str(tmp_path / "none.sock")
    for argv in (["-c", str(cfg), "--socket", sock, "status", "--json"],
                 ["status", "-c", str(cfg), "--json", "--socket", sock],
                 ["--json", "status", "--config", str(cfg), "--socket", sock]):
        assert main(argv) == 3                      # status: no daemon answered
        doc = json.loads(capsys.readouterr().out)
        assert doc["links"][0]["name"] == "replica1", argv
    assert main(["quarantine", "list", "-i", "east", "--socket", sock]) == 1
    assert "the daemon is not running" in capsys.readouterr().err


def test_the_last_global_option_wins_and_json_is_refused_where_meaningless(tmp_path, capsys):
    args = build_parser().parse_args(["-i", "east", "status", "-i", "west"])
    assert args.instance == "west"
    with pytest.raises(SystemExit) as exc:
        main(["--json", "hold", "replica1"])
    assert exc.value.code == 2
    assert "--json: hold has no JSON output" in capsys.readouterr().err


def walk(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from walk(sub)


def test_every_argument_has_help():
    for parser in walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{parser.prog}: {action.dest} has no help"


def test_internal_commands_are_not_listed_but_still_run(capsys):
    text = build_parser().format_help()
    listed = [line.split()[0] for line in text.split("COMMAND")[-1].splitlines()
              if line.startswith("    ") and line.split()]
    assert "daemon" not in listed and "worker" not in listed
    assert listed[0] == "status" and "reload" in listed
    assert build_parser().parse_args(["daemon", "--instance", "east"]).instance == "east"


@pytest.mark.parametrize("argv", [["promote"], ["demote"], ["failover"],
                                  ["quarantine", "drop", "bob"], ["repair", "replica1"]])
def test_destructive_commands_refuse_without_a_terminal_or_yes(tmp_path, capsys, argv):
    cfg = write(tmp_path)
    rc = main(["-c", str(cfg), "--socket", str(tmp_path / "none.sock"), *argv])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(f"syncwarden {' '.join(argv[:1 + (argv[0] == 'quarantine')])}:"
                          " refused: not asked on a terminal and no --yes given; it would: ")
    assert len(err.splitlines()) == 1


def test_asking_on_a_terminal():
    err = Tty()
    assert ask.confirm("demote", ["stop every worker"], False, Tty("y\n"), err) is None
    assert "syncwarden demote will:\n  - stop every worker\nGo on? [y/N] " in err.getvalue()
    assert ask.confirm("demote", ["x"], False, Tty("\n"), Tty()) == 1     # the default: no
    assert ask.confirm("demote", ["x"], False, Tty("no\n"), Tty()) == 1
    assert ask.confirm("demote", ["x"], True, io.StringIO(), io.StringIO()) is None  # --yes


class FakeDaemon:
    """A control socket that answers from a script of results, then goes away."""

    def __init__(self, path, answers):
        self.path, self.answers = str(path), list(answers)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        import os
        while self.answers:
            conn, _ = self.sock.accept()
            with conn:
                conn.makefile("rb").readline()
                conn.sendall(json.dumps(self.answers.pop(0)).encode() + b"\n")
        self.sock.close()
        os.unlink(self.path)


def draining(entries):
    return {"ok": True, "result": {"links": [
        {"name": "replica1", "state": "draining", "backlog": {"entries": entries},
         "last_drain": None}]}}


def test_drain_wait_survives_the_daemon_going_away_with_one_line(tmp_path, capsys):
    path = tmp_path / "control.sock"
    daemon = FakeDaemon(path, [{"ok": True, "result": "replica1: draining 500 entries"},
                               draining(500), draining(200)])
    rc = main(["--socket", str(path), "drain", "replica1", "--wait"])
    daemon.thread.join(5)
    assert rc == 1
    out, err = capsys.readouterr()
    assert out == "replica1: draining 500 entries\n"
    assert err.strip().startswith("syncwarden drain: the daemon went away while waiting (no"
                                  " daemon socket at")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_drain_progress_names_what_is_left():
    out, now = Tty(), [0.0]
    show = cli.progress_printer(out, every=2.0, clock=lambda: now[0])
    show(draining(500)["result"]["links"])
    now[0] = 1.0
    show(draining(400)["result"]["links"])           # too soon: not shown
    now[0] = 2.5
    show(draining(300)["result"]["links"])
    assert out.getvalue() == "\r\033[Kreplica1: 500 queued ...\r\033[Kreplica1: 300 queued ..."


def test_status_watch_repeats_until_interrupted(tmp_path, capsys):
    cfg = write(tmp_path)
    args = build_parser().parse_args(["-c", str(cfg), "--socket", str(tmp_path / "x.sock"),
                                      "status", "--watch", "-n", "5"])
    for key, default in cli.GLOBAL_DEFAULTS.items():
        setattr(args, key, getattr(args, key, default))
    from supervisor.paths import Instance
    args.instance, args.state_dir = Instance(), tmp_path / "state"
    naps = []

    def sleep(seconds):
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt
    assert cli._watch(args, sleep=sleep, clock=lambda: 0.0) == 0
    out = capsys.readouterr().out
    assert naps == [5.0, 5.0, 5.0] and out.count("every 5s: syncwarden status") == 3
    assert out.count("syncwarden daemon is not running") == 3


def test_progress_only_for_a_terminal(tmp_path):
    assert ask.on_terminal(Tty()) is not None
    assert ask.on_terminal(io.StringIO()) is None                 # a pipe, the timer's journal
    with open(tmp_path / "f", "w") as f:
        assert ask.on_terminal(f) is None
