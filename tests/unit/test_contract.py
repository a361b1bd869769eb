"""docs/CONTRACT.md against the code: what monitoring and scripts rely on must not drift.

The expected state codes and the transition table are written out here on purpose: changing
them in states.py alone must fail, because they are promised never to change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from supervisor import config as configmod
from supervisor.commands import cli
from supervisor.commands.check import add_last_checks
from supervisor.move.report import add_moves
from supervisor.move import files as move_files, workflow
from supervisor.move.edges import GUARD_PREFIX
from supervisor.commands.offline import offline_status
from supervisor.daemon import Daemon
from supervisor.link import hooks
from supervisor.link.freeze import Freeze
from supervisor.link.seed import Seed
from supervisor.link.seed_plan import Progress
from supervisor.link.states import TRANSITIONS, Link, LinkState
from supervisor.pair import check, compare, failover
from supervisor import paths as pathsmod
from supervisor.paths import Instance
from supervisor.systemd import journal
from supervisor.systemd.notify import Notifier
from supervisor.systemd.units import UnitKind

from .fakes import FakeJournal
from .test_core import step
from .test_isolation import alice_quarantined

REPO = Path(__file__).resolve().parents[2]
CONTRACT = (REPO / "docs" / "CONTRACT.md").read_text()
CATALOG = (REPO / "packaging" / "syncwarden.catalog").read_text()
MANPAGE = (REPO / "packaging" / "man" / "syncwarden.8").read_text()

STATES = {"down": 0, "catching-up": 1, "live": 2, "draining": 3, "quarantined": 4}
TRANSITION_TABLE = [
    ("replica_up", ("down",), "catching-up"),
    ("adopt", ("down",), "catching-up"),
    ("caught_up", ("catching-up",), "live"),
    ("fell_behind", ("live",), "catching-up"),
    ("replica_lost", ("catching-up", "live"), "down"),
    ("worker_exited", ("catching-up", "live"), "down"),
    ("login_refused", ("catching-up", "live"), "down"),
    ("worker_failing", ("catching-up", "live"), "catching-up"),
    ("hold", ("catching-up", "live"), "down"),
    ("disable", ("catching-up", "live"), "down"),
    ("drain", ("down", "catching-up", "live"), "draining"),
    ("drained", ("draining",), "down"),
    ("drain_failed", ("draining",), "down"),
    ("quarantine", ("down", "catching-up", "live", "draining"), "quarantined"),
    ("release", ("quarantined",), "down"),
]


def section(title: str) -> str:
    """The text of one '## title' section of CONTRACT.md."""
    start = CONTRACT.index(f"\n## {title}\n")
    end = CONTRACT.find("\n## ", start + 1)
    return CONTRACT[start:end if end > 0 else None]


def rows(text: str) -> list[list[str]]:
    """The body rows of every markdown table in ``text``, as cells (`\\|` does not split)."""
    out = []
    for line in text.splitlines():
        if re.match(r"^\|[-| ]+\|$", line):
            out.pop()                       # the header row above the separator
        elif line.startswith("|"):
            out.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return out


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def first_ticked(text: str) -> set[str]:
    return {ticked(r[0])[0] for r in rows(text) if ticked(r[0])}


# --- states and transitions -----------------------------------------------------------------

def test_state_names_and_codes():
    assert {s.value: s.code for s in LinkState} == STATES
    assert {ticked(r[1])[0]: int(r[0]) for r in rows(section("Link states"))} == STATES
    catalog = dict((n, int(c)) for c, n in re.findall(r"^\s+(\d) ([a-z-]+)\s", CATALOG, re.M))
    assert catalog == STATES
    man = {n.replace("\\-", "-"): int(c)
           for c, n in re.findall(r'^\.BR (\d) " ([a-z\\-]+)"$', MANPAGE, re.M)}
    assert man == STATES


def test_transition_table_is_fixed_and_documented():
    code = [(trigger, tuple(s.value for s in (src if isinstance(src, list) else [src])),
             dest.value) for trigger, src, dest in TRANSITIONS]
    assert code == TRANSITION_TABLE
    doc = [(ticked(r[0])[0], tuple(ticked(r[1])), ticked(r[2])[0])
           for r in rows(section("Transitions"))]
    assert doc == TRANSITION_TABLE


def test_the_machine_allows_exactly_the_table():
    allowed = {(t, s): d for t, sources, d in TRANSITION_TABLE for s in sources}
    for state in LinkState:
        for trigger in dict.fromkeys(t for t, _, _ in TRANSITION_TABLE):
            link = Link("replica1", lambda: 0.0, initial=state)
            changed = link.fire(trigger, "test")
            assert changed == ((trigger, state.value) in allowed), (trigger, state)
            assert link.state.value == allowed.get((trigger, state.value), state.value)


# --- the journal ----------------------------------------------------------------------------

def test_message_ids_in_code_contract_catalog_and_man_page():
    ids = set(journal.MESSAGE_IDS.values())
    assert len(ids) == len(journal.MESSAGE_IDS)
    in_catalog = re.findall(r"^-- ([0-9a-f]{32})$", CATALOG, re.M)
    assert len(in_catalog) == len(set(in_catalog))
    assert set(in_catalog) == ids
    assert set(re.findall(r"\b[0-9a-f]{32}\b", CONTRACT)) == ids
    assert set(re.findall(r"^\.B ([0-9a-f]{32})$", MANPAGE, re.M)) == ids
    assert {r[0]: ticked(r[1])[0] for r in rows(section("Journal")) if len(r) == 4
            and re.fullmatch(r"`[0-9a-f]{32}`", r[1])} == journal.MESSAGE_IDS
    for unit in (REPO / "units").iterdir():
        assert set(re.findall(r"\b[0-9a-f]{32}\b", unit.read_text())) <= ids, unit.name


def emitted_fields() -> set[str]:
    """Every structured journal field the product writes: the literal ones in the source, and
    the per-category counts of a check."""
    found = set()
    for path in (REPO / "supervisor").rglob("*.py"):
        found |= set(re.findall(r"\b(SYNCWARDEN_[A-Z][A-Z_]*|UNIT_NAME)=", path.read_text()))
    return found | {"SYNCWARDEN_" + c.upper().replace("-", "_") for c in compare.CATEGORIES}


def test_journal_fields_documented_and_catalog_uses_real_ones():
    documented = set(re.findall(r"`((?:SYNCWARDEN_[A-Z_]+)|UNIT_NAME)`", section("Journal")))
    assert emitted_fields() == documented
    entries = "\n".join(x for x in CATALOG.splitlines() if not x.startswith("#"))
    assert set(re.findall(r"@([A-Z_]+)@", entries)) <= emitted_fields()


# --- status JSON ----------------------------------------------------------------------------

IMAPD = """configdirectory: {d}
sync_log: on
sync_log_channels: replica1 replica2 backup
sync_try_imap: no
replica1_sync_host: 127.0.0.1
replica1_sync_port: 11005
replica2_sync_host: 127.0.0.1
replica2_sync_port: 12005
"""
MAPS = {"links[].last_check.counts",         # keyed by data (the categories), not fields
        "unsupervised_channels[].backlog"}    # the fields of links[].backlog, checked there


def paths(doc: dict, prefix: str = "", maps=MAPS) -> set[str]:
    """Dotted paths of every key, lists as ``name[]``; ``maps`` are leaves (keyed by data)."""
    out = set()
    for key, value in doc.items():
        p = prefix + key
        out.add(p)
        if isinstance(value, dict) and p not in maps:
            out |= paths(value, p + ".", maps)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    out |= paths(item, p + "[].", maps)
    return out


def status_documents(tmp_path) -> dict[str, dict]:
    """Each variant of the status document, with every optional field present somewhere: a
    quarantined user, a finished drain, a log-run with a malformed line, an unreadable sync
    directory, a recorded check, a status file left behind, an invalid config."""
    sup, env, d = alice_quarantined(tmp_path)
    sup.operator.drain("replica2")
    step(sup, env, n=2)
    (d / "log-run").write_text("APPEND user.bob\nnot a sync log line\n")
    (tmp_path / "sync" / "replica2").write_text("")     # a file where Cyrus's directory goes
    step(sup, env)
    instance = Instance(root=tmp_path)
    state = instance.state_dir
    check.save(compare.Report("replica1", True, 1.0, 2.0, users=1), state)
    with_lifecycle(sup)
    sup.views = sup.status_views()        # the status file is built from the tick's views

    daemon = Daemon(tmp_path / "unused.yaml", instance, journal=FakeJournal(),
                    notifier=Notifier())
    daemon.strays.set(sup.imapd, ["backup", None])      # a channel, and the default one
    daemon.coordination = coordination()                # with coordination: and a switchover
    running = daemon._status(sup)                       # what the control socket answers
    running["daemon"] = {"running": True}               # as cli.cmd_status adds it
    add_last_checks(running, state)
    move_files.save(state, {**workflow.new_state(workflow.Plan("bob", "default", "east", 60),
                                                 1e9), "error": "verify: 1 difference(s)"})
    add_moves(running, state)

    daemon._write_status(sup)
    written = json.loads(instance.status_file.read_text())

    (tmp_path / "imapd.conf").write_text(IMAPD.format(d=tmp_path))
    cfg = tmp_path / "syncwarden.yaml"
    cfg.write_text(f"cyrus: {{imapd_conf: {tmp_path}/imapd.conf}}\nlinks:\n"
                   "  replica1: {host: 127.0.0.1, port: 11005}\n"
                   "  replica2: {host: 127.0.0.1, port: 12005}\n")
    offline = offline_status(cfg, "no daemon socket", instance)
    add_last_checks(offline, state)
    add_moves(offline, state)
    bad = tmp_path / "bad.yaml"
    bad.write_text("links: {replica1: {host: h}}\n")
    offline_bad = offline_status(bad, "no daemon socket", instance)
    return {"running": running, "file": written, "offline": offline,
            "offline-invalid": offline_bad}


def coordination():
    """Coordination as the daemon has it after a round, with a switchover request."""
    from supervisor.coord import commands
    from supervisor.coord.keys import Keys
    from supervisor.coord.service import Coordination
    from supervisor.coord.settings import CoordinationSettings, EtcdSettings

    from .fakeetcd import FakeEtcdStore
    from .fakes import FakeClock

    clock = FakeClock()
    store = FakeEtcdStore(clock)
    c = Coordination(CoordinationSettings(EtcdSettings(("http://etcd:2379",)), "mail1", "a"),
                     "default", FakeJournal(), clock, lambda: None, etcd=store.client())
    c.authority.step(True)
    commands.write_request(store.client(), Keys("/syncwarden", "mail1"), "a", "b", False, "x")
    c.authority.step(True)
    return c


def with_lifecycle(sup) -> None:
    """A seed on replica1; a freeze with a finished hook, and a retirement, on replica2 (both
    at once only here: every lifecycle field appears)."""
    lc = sup.lifecycle
    progress = Progress("replica1", 1e9, phase="syncing", users=3, shared=1, cursor=3,
                        done_items=1, sync_seconds=2.0)
    lc.seeds["replica1"] = Seed(sup.links["replica1"].units, lc._seed_edges, progress,
                                {"users": ["a", "b", "c"], "shared": ["s"]})
    hook = {"state": "exited", "started": 1e9, "ended": 1e9 + 1, "status": 0}
    lc.freezes["replica2"] = Freeze("replica2", "u", {
        "phase": "frozen", "since": 1e9, "frozen_at": 1e9, "until": 2e9, "exec": "x",
        "user": None, "hook": hook}, lc._freeze_edges)
    lc.store.retired["replica2"] = {"phase": "retired", "at": 1e9, "forced": False,
                                    "entries_dropped": 0}


def test_every_status_field_is_documented_where_it_appears(tmp_path):
    docs = status_documents(tmp_path)
    emitted = {variant: paths(doc) for variant, doc in docs.items()}
    emitted["offline"] |= emitted.pop("offline-invalid")
    table = {ticked(r[0])[0]: {w.strip() for w in r[2].split(",")}
             for r in rows(section("Status JSON")) if len(r) == 4}
    for variant, fields in emitted.items():
        undocumented = fields - set(table)
        assert not undocumented, f"{variant}: not in CONTRACT.md: {sorted(undocumented)}"
    for field, where in table.items():
        variants = set(emitted) if where == {"all"} else where
        for variant in emitted:
            assert (field in emitted[variant]) == (variant in variants), (field, variant)
    counts = docs["running"]["links"][0]["last_check"]["counts"]
    assert list(counts) == list(compare.CATEGORIES)


def test_check_json_fields_documented():
    diff = compare.Difference(compare.REPLICA_ONLY, "message", "bob", "user.bob", 7, "g" * 40,
                              "only on the replica", master=None,
                              replica={"uid": 7, "guid": "g" * 40, "flags": [], "modseq": 3})
    report = compare.Report("replica1", True, 1.0, 2.0, differences=[diff], errors=["x: y"])
    last_check = {p.removeprefix("links[].last_check.") for p in first_ticked(section(
        "Status JSON")) if p.startswith("links[].last_check.")}
    assert set(report.summary()) == last_check
    # check --json: the summary (documented as last_check), the differences and error details
    leaves = {"counts", "differences[].master", "differences[].replica"}
    emitted = paths(report.as_json(), maps=leaves) - last_check
    assert emitted == first_ticked(section("check --json"))
    assert all(f"`{c}`" in section("check --json") for c in compare.CATEGORIES)


# --- files, units, commands, configuration --------------------------------------------------

def test_paths_in_code_are_documented():
    files = section("Files and directories")
    default = Instance()
    for path in (default.config, configmod.CheckSettings.credentials, default.runtime_dir,
                 default.socket, default.status_file, default.users_file("LINK"),
                 default.state_dir, default.holds_file, default.role_file,
                 check.result_path("LINK", default.state_dir)):
        assert f"`{path}" in files, path
    assert f"`{default.quarantine_dir}/LINK/NAME.json`" in files
    named = Instance("east")
    for path in (named.config, named.runtime_dir, named.state_dir):
        assert f"`{str(path).replace('east', 'NAME')}" in section("Instances"), path


def test_units_and_commands_documented():
    units = first_ticked(section("Units"))
    shipped = {u.name.replace("@.", "@NAME." if u.name.startswith("syncwarden@") else "@LINK.")
               for u in (REPO / "units").iterdir()}
    transient = {f"{failover.VERIFY_UNIT}.service", f"{hooks.IDENTIFIER}-INSTANCE-LINK-ID.service"}
    transient |= {f"{k.value}@LINK.service" for k in (UnitKind.LIST, UnitKind.FREEZE)}
    transient |= {f"{GUARD_PREFIX}-INSTANCE-HASH.{kind}" for kind in ("timer", "service")}
    assert shipped | transient == units
    commands = [c.split()[0] for r in rows(section("Commands and exit codes"))
                for c in ticked(r[0])]
    assert set(cli.COMMANDS) | {"--version"} == set(commands)


def known_keys(prefix: str, snippet: str) -> set[str]:
    """The keys the parser accepts at one place, from its own error for an unknown key."""
    try:
        configmod.parse(snippet)
    except configmod.ConfigError as exc:
        for problem in exc.problems:
            m = re.match(rf"^{re.escape(prefix)}zzzz: unknown key \(known: (.*)\)$", problem)
            if m:
                return set(m.group(1).split(", "))
    raise AssertionError(f"no 'known:' list for {prefix!r}")


def test_every_config_key_is_documented():
    places = {"": "zzzz: 1\n", "links.NAME.": "links: {r1: {zzzz: 1}}\n",
              "check.master.": "check: {master: {zzzz: 1}}\n",
              "coordination.etcd.": "coordination: {etcd: {zzzz: 1}}\n",
              "check.replicas.LINK.": "links: {r1: {host: h, port: 1}}\n"
                                      "check: {replicas: {r1: {host: h, zzzz: 1}}}\n"}
    places["stores.NAME."] = "stores: {s1: {zzzz: 1}}\n"
    places["stores.NAME.imap."] = "stores: {s1: {imap: {zzzz: 1}}}\n"
    for key in configmod.TOP_KEYS:
        if key not in ("role", "links", "stores"):
            places[f"{key}."] = f"{key}: {{zzzz: 1}}\n"
    expected = {"links.NAME", "check.replicas.LINK", "stores", "stores.NAME"}
    for prefix, snippet in places.items():
        real = prefix.replace("links.NAME.", "links.r1.").replace(".LINK.", ".r1.").replace(
            "stores.NAME.", "stores.s1.")
        expected |= {prefix + k for k in known_keys(real, snippet)}
    assert first_ticked(section("Configuration keys")) == expected
    example = yaml.safe_load((REPO / "config" / "syncwarden.yaml").read_text())
    assert set(example) <= expected


def test_installed_with_both_packages_and_named_by_the_man_page():
    assert "docs/CONTRACT.md" in (REPO / "packaging/debian/syncwarden.docs").read_text().split()
    assert re.search(r"^%doc .*\bdocs/CONTRACT\.md\b", (REPO / "packaging/rpm/syncwarden.spec")
                     .read_text(), re.M)
    see_also = MANPAGE[MANPAGE.index(".SH SEE ALSO"):]
    assert "/usr/share/doc/syncwarden/CONTRACT.md" in see_also


def test_instance_names_cannot_take_the_default_instances_subdirectories():
    """Instance NAME lives in /run/syncwarden/NAME and /var/lib/syncwarden/NAME, inside the
    default instance's own directories: no NAME may be one of their entries."""
    default = Instance()
    used = {default.users_dir.name, default.quarantine_dir.name,
            check.result_path("LINK", default.state_dir).parent.name,
            "repair",      # commands/repair.py: the stash, state_dir / "repair" / LINK
            "verify"}      # pair/failover.py: /run/syncwarden/verify
    assert used <= pathsmod.RESERVED
    assert all(f"`{name}`" in section("Instances") for name in pathsmod.RESERVED)


# --- metrics and the exit codes monitoring reads ----------------------------------------------

def test_every_metric_is_documented_with_its_type_and_labels():
    from supervisor.monitor.metrics import METRICS

    documented = {ticked(r[0])[0]: (r[1], tuple(ticked(r[2])))
                  for r in rows(section("Metrics")) if len(r) == 4}
    code = {(n + "_total" if kind == "counter" else n): (kind, labels)
            for n, (kind, labels, _) in METRICS.items()}
    assert documented == code
    man = MANPAGE[MANPAGE.index(".SH METRICS"):MANPAGE.index(".SH JOURNAL")].replace("\\-", "-")
    for name in code:   # by name, or as a suffix of the series listed before it
        short = re.sub(r"^syncwarden_link_last_(drain|check)", "", name)
        assert name in man or re.search(rf" {short}\b", man), name


def test_monitoring_exit_codes_are_documented_as_coded():
    from supervisor import exits

    commands = {ticked(r[0])[0]: r[2] for r in rows(section("Commands and exit codes"))}
    check_row = commands["check LINK [--user U]... [--deep] [--json]"]
    assert f"{exits.CHECK_IN_SYNC} in sync" in check_row
    assert f"{exits.CHECK_DIFFERENCES} differences" in check_row
    assert f"{exits.CHECK_INCOMPLETE} a side or user unreadable" in check_row
    status_row = next(v for k, v in commands.items() if k.startswith("status [LINK] [--json]"))
    assert f"{exits.EXIT_UNREACHABLE} no daemon answered" in status_row
    nagios_row = commands["status [LINK] --nagios"]
    for code, name in exits.NAGIOS_NAMES.items():
        assert f"{code} {name}" in nagios_row
    man_check = MANPAGE[MANPAGE.index('.BR check " \\fILINK'):]
    assert "0 (OK) if both sides" in man_check and "2 (CRITICAL) if they" in man_check
    assert "3 (UNKNOWN) if a side" in man_check


def test_move_json_fields_documented():
    from supervisor.commands.move import _outcome
    state = {**workflow.new_state(workflow.Plan("bob", "default", "east", 60), 1.0),
             "phases": {"prepare": {"seconds": 0.1, "detail": ""}}}
    doc = {"store": "east", "source": "default", "moves": [_outcome(state)]}
    assert paths(doc, maps={"moves[].phases"}) == first_ticked(section("move --json"))
