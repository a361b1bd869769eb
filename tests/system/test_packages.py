"""The .deb and the .rpm, as a user gets them, on Debian 12 and (the tests marked trixie) 13.

Both are built once per test session and release (`packaging/build`, what `make deb` and
`make rpm` run) with that release's own tools (pkgtools.py: this host's for its own release,
a container's for the other): payloads, scriptlets, lintian and rpmlint, the rpm installed
into a scratch root with that release's rpm. On the host: the message catalog, man pages and
bash completion against the code. In a container of the release with real systemd and real
Cyrus, and only Debian's python3 and packages: `dpkg -i`, enable, replicate, `journalctl -x`,
an upgrade while a backlog waits, remove and purge.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .pkgtools import HOST_PATH, Tools, host_run as _host_run, tools_for
from .swlab import Syncwarden, log_lines, wait_same

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
USERS = ("bob", "alice", "carol", "dave", "erin")
UPGRADE_SUFFIX = "+systest1"        # the "rebuilt higher version" of the upgrade test
INIT_D_TAG = "package-supports-alternative-init-but-no-init.d-script"

DEB_TOOLS = ("dpkg-dev", "debhelper", "dh-python", "pybuild-plugin-pyproject",
             "python3-setuptools", "lintian")
RPM_TOOLS = ("rpm", "rpmlint", "cpio")
# What the rpm may require: only what Fedora itself ships (packages.fedoraproject.org:
# python3-pystemd, python3-pyyaml, python3-sdnotify, python3-systemd, python3-prometheus_client,
# cyrus-imapd; python3 and systemd), or
# rpm itself. python3-transitions is not there (retired after Fedora 34): it is bundled.
FEDORA_SHIPS = re.compile(r"^(python\(abi\) >= 3\.11|python3dist\((pystemd|pyyaml|sdnotify"
                          r"|systemd-python|prometheus-client)\)"
                          r" >= [\d.]+|cyrus-imapd|systemd|/bin/sh|/usr/bin/python3"
                          r"|config\(syncwarden\) = .*|rpmlib\(.*)$")


def _missing(packages) -> str | None:
    """The Debian packages (of the build tools) that are not installed, as a skip reason."""
    gone = [p for p in packages
            if _host_run(["dpkg-query", "-W", "-f=${db:Status-Status}", p],
                         check=False).stdout != "installed"]
    return f"package build tools missing: apt-get install {' '.join(gone)}" if gone else None


def _version() -> str:
    return re.search(r'__version__ = "(.+)"', (REPO / "supervisor/__init__.py").read_text())[1]


def _build(tools: Tools, kind: str, out, **env) -> float:
    """packaging/build KIND OUT with the release's own tools; lint is a test of its own, and
    the unit tests (which the builds run by default) are the suite's own business. Returns
    the seconds taken."""
    t0 = time.monotonic()
    tools.run([tools.repo / "packaging/build", kind, out],
              env={"NOLINT": "1", "NOCHECK": "1", **env}, timeout=600)
    return time.monotonic() - t0


@dataclass
class Debs:
    deb: Path            # syncwarden_<version>_all.deb (host path)
    upgrade: Path        # the same sources as <version>+systest1
    version: str
    upgrade_version: str
    tree: Path           # the source tree the first one was built from (debian/syncwarden: payload)
    changes: str         # its .changes, as the tools see it


@dataclass
class Rpms:
    rpm: str             # as the tools see them
    upgrade: str         # Release 2
    top: str


@pytest.fixture(scope="session")
def tools(release, tmp_path_factory):
    """The release's packaging tools: this host's for its own release, else a container's."""
    t = tools_for(release, tmp_path_factory.mktemp(f"pkg-{release}"))
    yield t
    t.stop()


@pytest.fixture(scope="session")
def debs(tools) -> Debs:
    reason = _missing(DEB_TOOLS) if type(tools) is Tools else None
    if reason:
        pytest.skip(reason)
    out = tools.scratch / "debs"
    version = _version()
    # In a container of the other release the build also runs the unit tests (dh_auto_test):
    # the unit suite under that release's Python (3.13 on Debian 13).
    took = _build(tools, "deb", out / "1", **({} if type(tools) is Tools else {"NOCHECK": ""}))
    up = f"{version}{UPGRADE_SUFFIX}"
    _build(tools, "deb", out / "2", DEB_VERSION=up)
    print(f"built the .deb in {took:.1f}s on {tools.release}")
    changes = next(tools.host_path(out / "1/deb").glob("syncwarden_*.changes")).name
    return Debs(tools.host_path(out / "1/deb" / f"syncwarden_{version}_all.deb"),
                tools.host_path(out / "2/deb" / f"syncwarden_{up}_all.deb"), version, up,
                tools.host_path(out / "1/deb" / f"syncwarden-{version}"),
                str(out / "1/deb" / changes))


@pytest.fixture(scope="session")
def rpms(tools) -> Rpms:
    reason = _missing(RPM_TOOLS) if type(tools) is Tools else None
    if reason:
        pytest.skip(reason)
    out = tools.scratch / "rpms"
    version = _version()
    _build(tools, "rpm", out / "1")
    _build(tools, "rpm", out / "2", RPM_RELEASE="2")
    return Rpms(f"{out}/1/rpm/RPMS/noarch/syncwarden-{version}-1.noarch.rpm",
                f"{out}/2/rpm/RPMS/noarch/syncwarden-{version}-2.noarch.rpm", f"{out}/1/rpm")


def _unit_names() -> list[str]:
    return sorted(p.name for p in (REPO / "units").glob("syncwarden*"))


def _extract_deb(deb: Path, dest: Path) -> Path:
    _host_run(["dpkg-deb", "-x", deb, dest])
    return dest


# --- the .deb, with each release's tools -------------------------------------------------------

@pytest.mark.trixie
def test_deb_payload_conffile_and_depends(debs, tools, tmp_path):
    listing = _host_run(["dpkg-deb", "-c", debs.deb]).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    expected = {
        "/usr/bin/syncwarden",
        "/usr/lib/syncwarden/supervisor/__init__.py", "/usr/lib/syncwarden/supervisor/commands/cli.py",
        "/usr/lib/syncwarden/supervisor/daemon.py",
        "/etc/syncwarden/syncwarden.yaml",
        "/usr/lib/systemd/catalog/syncwarden.catalog",
        "/usr/share/man/man8/syncwarden.8.gz", "/usr/share/man/man5/syncwarden.yaml.5.gz",
        "/usr/share/bash-completion/completions/syncwarden",
        "/usr/share/zsh/vendor-completions/_syncwarden",
        "/usr/share/doc/syncwarden/README.md",      # uncompressed: the unit's Documentation=
        "/usr/share/doc/syncwarden/CONTRACT.md",    # uncompressed: syncwarden(8) names it
        "/usr/share/doc/syncwarden/copyright",
        "/usr/share/syncwarden/prometheus/syncwarden-rules.yml",
        "/usr/share/syncwarden/grafana/syncwarden-dashboard.json",
        "/usr/share/syncwarden/hooks/routing-map-hook", "/usr/share/doc/syncwarden/moves.md",
    } | {f"/usr/lib/systemd/system/{u}" for u in _unit_names()}
    assert expected <= paths, sorted(expected - paths)
    # one copy of each unit, nothing in the public module path, no wheel leftovers
    assert not [p for p in paths if p.startswith(("/lib/", "/usr/lib/python3"))]
    assert not [p for p in paths if "dist-info" in p or "__pycache__" in p]
    # the lintian override only for a lintian that knows its tag (Debian 12's, not 13's)
    knows = tools.run(["lintian-explain-tags", INIT_D_TAG], check=False).returncode == 0
    assert ("/usr/share/lintian/overrides/syncwarden" in paths) == knows, tools.release
    control = _host_run(["dpkg-deb", "-f", debs.deb]).stdout
    assert f"Version: {debs.version}\n" in control and "Architecture: all\n" in control
    depends = re.search(r"^Depends: (.*)$", control, re.M)[1]
    for dep in ("python3-transitions", "python3-pystemd", "python3-sdnotify", "python3-yaml",
                "python3-systemd", "python3-prometheus-client", "cyrus-replication"):
        assert dep in depends
    assert debs.deb.name == f"syncwarden_{debs.version}_all.deb"
    ctl = tmp_path / "control"
    _host_run(["dpkg-deb", "-e", debs.deb, ctl])
    assert (ctl / "conffiles").read_text().split() == ["/etc/syncwarden/syncwarden.yaml"]
    # installed disabled; stopped on removal; the private directory byte-compiled
    postinst, prerm = (ctl / "postinst").read_text(), (ctl / "prerm").read_text()
    assert "py3compile -p syncwarden /usr/lib/syncwarden" in postinst
    assert "deb-systemd-helper enable" in postinst and "was-enabled" in postinst
    assert "deb-systemd-invoke stop 'syncwarden.service'" in prerm
    root = _extract_deb(debs.deb, tmp_path / "root")
    launcher = (root / "usr/bin/syncwarden").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -I\n") and '"/usr/lib/syncwarden"' in launcher
    for unit in _unit_names():   # byte for byte the unit files the package was built from
        built = (root / "usr/lib/systemd/system" / unit).read_bytes()
        assert built == (debs.tree / "units" / unit).read_bytes(), unit
    assert (root / "etc/syncwarden/syncwarden.yaml").read_bytes() == \
        (debs.tree / "config/syncwarden.yaml").read_bytes()


@pytest.mark.trixie
def test_deb_lintian_clean(debs, tools):
    """No tag at all, pedantic and info included, with the release's own lintian (2.116 on
    Debian 12, 2.122 on 13); overrides carry their reasons."""
    version = tools.run(["lintian", "--version"]).stdout.strip()
    # (as root, lintian warns about that on stderr: the tags are on stdout)
    r = tools.run(["lintian", "--display-info", "--pedantic", "--fail-on",
                   "error,warning,info,pedantic", debs.changes], check=False)
    assert r.returncode == 0 and r.stdout.strip() == "", f"{version}\n{r.stdout}{r.stderr}"
    overrides = (REPO / "packaging/debian/syncwarden.lintian-overrides.in").read_text()
    for line in overrides.splitlines():
        if line and not line.startswith("#"):   # every override is preceded by its reason
            before = overrides[:overrides.index(line)].rstrip().splitlines()
            assert before and before[-1].startswith("#"), line


# --- the .rpm, with each release's rpm (4.18, 4.20) and rpmlint (2.4, 2.7) -----------------------

@pytest.mark.trixie
def test_rpm_payload_scriptlets_and_rpmlint(rpms, debs, tools, tmp_path):
    files = set(tools.run(["rpm", "-qlp", rpms.rpm]).stdout.split())
    expected = {
        "/usr/bin/syncwarden", "/usr/lib/syncwarden/supervisor/commands/cli.py",
        "/etc/syncwarden/syncwarden.yaml", "/usr/lib/systemd/catalog/syncwarden.catalog",
        "/usr/share/man/man8/syncwarden.8.gz", "/usr/share/man/man5/syncwarden.yaml.5.gz",
        "/usr/share/bash-completion/completions/syncwarden",
        "/usr/share/zsh/site-functions/_syncwarden",
        "/usr/share/doc/syncwarden/README.md", "/usr/share/doc/syncwarden/CONTRACT.md",
        "/usr/share/syncwarden/prometheus/syncwarden-rules.yml",
        "/usr/share/syncwarden/grafana/syncwarden-dashboard.json",
        "/usr/share/syncwarden/hooks/routing-map-hook", "/usr/share/doc/syncwarden/moves.md",
        # transitions, bundled in the private directory with its license
        "/usr/lib/syncwarden/transitions/core.py", "/usr/share/licenses/syncwarden/LICENSE.transitions",
    } | {f"/usr/lib/systemd/system/{u}" for u in _unit_names()}
    assert expected <= files, sorted(expected - files)
    flags = tools.run(["rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]",
                       rpms.rpm]).stdout
    assert "/etc/syncwarden/syncwarden.yaml cn\n" in flags     # %config(noreplace)
    scripts = tools.run(["rpm", "-qp", "--scripts", rpms.rpm]).stdout
    post = scripts.split("preuninstall scriptlet")[0]
    preun, postun = scripts.split("preuninstall scriptlet")[1].split("postuninstall scriptlet")
    assert "install-system-units syncwarden.service" in post            # %systemd_post
    assert "remove-system-units syncwarden.service" in preun            # %systemd_preun
    assert "syncwarden-sync@*.service" in preun
    assert "mark-restart-system-units syncwarden.service" in postun     # ..._with_restart
    # Requires only what Fedora ships; transitions bundled, and said so
    requires = tools.run(["rpm", "-qpR", rpms.rpm]).stdout.splitlines()
    assert [r for r in requires if not FEDORA_SHIPS.match(r.strip())] == []
    for dep in ("python3dist(pystemd) >= 0.11", "python3dist(sdnotify) >= 0.3.1",
                "python3dist(pyyaml) >= 6.0", "python3dist(systemd-python) >= 234",
                "python3dist(prometheus-client) >= 0.16", "cyrus-imapd", "python(abi) >= 3.11"):
        assert dep in requires
    provides = tools.run(["rpm", "-qp", "--provides", rpms.rpm]).stdout.splitlines()
    bundled = re.search(r"^%global transitions_version (\S+)$",
                        (REPO / "packaging/rpm/syncwarden.spec").read_text(), re.M)[1]
    assert f"bundled(python3dist(transitions)) = {bundled}" in provides
    assert (REPO / f"packaging/rpm/transitions-{bundled}.tar.gz").is_file()
    # the same unit files as the .deb
    payload = tmp_path / "payload"
    payload.mkdir()
    subprocess.run(f"rpm2cpio {tools.host_path(rpms.rpm)} | cpio -idm --quiet", shell=True,
                   check=True, cwd=payload, env={"PATH": HOST_PATH})
    deb_root = _extract_deb(debs.deb, tmp_path / "deb")
    for unit in _unit_names():
        assert (payload / "usr/lib/systemd/system" / unit).read_bytes() == \
            (deb_root / "usr/lib/systemd/system" / unit).read_bytes(), unit
    assert (payload / "etc/syncwarden/syncwarden.yaml").read_bytes() == \
        (deb_root / "etc/syncwarden/syncwarden.yaml").read_bytes()
    # the launcher finds the bundled transitions before any other
    r = _host_run(["/usr/bin/python3", "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                   " import transitions; print(transitions.__file__, transitions.__version__)",
                   payload / "usr/lib/syncwarden"])
    assert r.stdout.split() == [f"{payload}/usr/lib/syncwarden/transitions/__init__.py", bundled]
    rpm_version = tools.run(["rpm", "--version"]).stdout.strip()
    top = rpms.top
    srpms = [f"{top}/SRPMS/{p.name}" for p in tools.host_path(f"{top}/SRPMS").glob("*.rpm")]
    lint = tools.run(["rpmlint", "-c", tools.repo / "packaging/rpm/rpmlint.toml",
                      "-r", tools.repo / "packaging/rpm/rpmlintrc", f"{top}/SPECS/syncwarden.spec",
                      rpms.rpm, *srpms], check=False)
    assert " 0 errors, 0 warnings" in lint.stdout, f"{rpm_version}\n{lint.stdout}{lint.stderr}"


def _scratch_root(tools: Tools, root: str) -> Path:
    """An otherwise empty root (a tools path) in which rpm can run scriptlets: /bin/sh (the
    release's dash and its libraries) and a stand-in systemd-update-helper that records how
    it was called. Returns its host path."""
    tools.run(["bash", "-e", "-c",
               f'mkdir -p {root}/bin; cp /bin/dash {root}/bin/sh\n'
               f'for lib in $(ldd /bin/dash | grep -o "/[^ ]*"); do'
               f' mkdir -p "{root}$(dirname "$lib")"; cp -L "$lib" "{root}$lib"; done'])
    host = tools.host_path(root)
    helper = host / "usr/lib/systemd/systemd-update-helper"
    helper.parent.mkdir(parents=True)
    helper.write_text('#!/bin/sh\necho "$*" >> /helper.log\n')
    helper.chmod(0o755)
    return host


@pytest.mark.trixie
def test_rpm_installs_upgrades_and_erases_in_a_scratch_root(rpms, tools):
    where = str(tools.scratch / f"scratch-{time.monotonic_ns()}")
    root = _scratch_root(tools, where)
    rpm = ["rpm", "--root", where, "--nodeps"]

    def helper_calls():
        log = root / "helper.log"
        return log.read_text().splitlines() if log.exists() else []

    r = tools.run(rpm + ["-i", rpms.rpm])
    assert "scriptlet failed" not in r.stderr, r.stderr
    for f in ["usr/bin/syncwarden", "usr/lib/syncwarden/supervisor/commands/cli.py",
              "usr/lib/syncwarden/transitions/core.py",
              "usr/lib/systemd/catalog/syncwarden.catalog",
              "usr/share/man/man8/syncwarden.8.gz",
              "usr/share/bash-completion/completions/syncwarden"] + \
             [f"usr/lib/systemd/system/{u}" for u in _unit_names()]:
        assert (root / f).is_file(), f
    conf = (root / "etc/syncwarden/syncwarden.yaml").read_text()
    # the same example as the .deb's: where Cyrus is, is found on the host (cyrus/layout.py)
    assert conf == (REPO / "config/syncwarden.yaml").read_text()
    assert tools.run(["rpm", "--root", where, "-qc", "syncwarden"]).stdout.split() == \
        ["/etc/syncwarden/syncwarden.yaml"]
    assert helper_calls() == ["install-system-units syncwarden.service"]

    (root / "etc/syncwarden/syncwarden.yaml").write_text(conf + "# edited by the admin\n")
    r = tools.run(rpm + ["-U", rpms.upgrade])
    assert "scriptlet failed" not in r.stderr, r.stderr
    assert helper_calls()[1:] == ["mark-restart-system-units syncwarden.service"]
    assert (root / "etc/syncwarden/syncwarden.yaml").read_text().endswith("by the admin\n")

    r = tools.run(rpm + ["-e", "syncwarden"])
    assert "scriptlet failed" not in r.stderr, r.stderr
    assert helper_calls()[2:] == ["remove-system-units syncwarden.service"]
    assert not (root / "usr/bin/syncwarden").exists()
    assert not (root / "usr/lib/systemd/system/syncwarden.service").exists()
    assert (root / "etc/syncwarden/syncwarden.yaml.rpmsave").exists()    # the edited config

# --- catalog, man pages, completion against the code -------------------------------------------

def _message_ids() -> dict[str, str]:
    sys.path.insert(0, str(REPO))
    try:
        from supervisor.systemd.journal import MESSAGE_IDS
    finally:
        sys.path.remove(str(REPO))
    return dict(MESSAGE_IDS)


def _parser():
    sys.path.insert(0, str(REPO))
    try:
        from supervisor.commands.cli import build_parser
    finally:
        sys.path.remove(str(REPO))
    return build_parser()


def _subcommands(listed_only=False) -> dict[str, tuple[list[str], list[str]]]:
    """{command: ([its actions, e.g. quarantine's list], [its option strings, theirs too])}
    from the CLI's argparse parser; ``listed_only``: not the internal ones --help leaves out."""
    import argparse

    def subparsers(parser):
        return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
                    None)

    def options(parser):
        own = [s for a in parser._actions for s in a.option_strings
               if s not in ("-h", "--help") and a.help != argparse.SUPPRESS]
        sub = subparsers(parser)
        return own + [o for p in (sub.choices.values() if sub else ()) for o in options(p)]

    out = {}
    top = subparsers(_parser())
    listed = {a.dest for a in top._choices_actions}
    for name, p in top.choices.items():
        if listed_only and name not in listed:
            continue
        sub = subparsers(p)
        out[name] = (sorted(sub.choices) if sub else [], sorted(set(options(p))))
    return out


def test_catalog_explains_every_message_id(tmp_path):
    catalog = (REPO / "packaging/syncwarden.catalog").read_text()
    ids = re.findall(r"^-- ([0-9a-f]{32})$", catalog, re.M)
    assert sorted(ids) == sorted(_message_ids().values())
    # journald accepts the file: build a catalog database from it and read every entry back
    cat = tmp_path / "usr/lib/systemd/catalog"
    cat.mkdir(parents=True)
    shutil.copy(REPO / "packaging/syncwarden.catalog", cat)
    _host_run(["journalctl", "--root", tmp_path, "--update-catalog"])
    listed = _host_run(["journalctl", "--root", tmp_path, "--list-catalog"]).stdout
    assert sorted(re.findall(r"^([0-9a-f]{32}) syncwarden: ", listed, re.M)) == sorted(ids)
    for entry in catalog.split("\n-- ")[1:]:
        head = entry.split("\n\n")[0]
        assert "Subject: " in head and "Defined-By: syncwarden" in head, head


def test_man_pages_and_completion_cover_every_command():
    commands = _subcommands()
    offered = _subcommands(listed_only=True)     # daemon, worker, move-expire: man page only
    assert set(commands) - set(offered) == {"daemon", "worker", "move-expire"}
    man8 = (REPO / "packaging/man/syncwarden.8").read_text().replace("\\-", "-")
    section = man8.split(".SH COMMANDS")[1].split(".SH ")[0]
    completion = (REPO / "packaging/completion/syncwarden").read_text()
    zsh = (REPO / "packaging/completion/_syncwarden").read_text()
    listed = re.search(r'local commands="([^"]*)"', completion)[1].split()
    assert sorted(listed) == sorted(offered)
    assert sorted(re.findall(r"^    '([a-z-]+):", zsh, re.M)) == sorted(offered)
    for name, (actions, options) in commands.items():
        assert re.search(rf"^\.B[RI]? {re.escape(name)}\b", section, re.M), f"man: {name}"
        for opt in options:
            assert opt in man8, f"man: {name} {opt}"
        if name not in offered:
            continue
        for action in actions:
            assert re.search(rf"^\.B[RI]? {name}[\s\"]+{action}\b", section, re.M), \
                f"man: {name} {action}"
            assert re.search(rf"\b{action}\b", completion), f"completion: {name} {action}"
            assert re.search(rf"\b{action}\b", zsh), f"zsh: {name} {action}"
        for opt in options:
            assert opt in completion, f"completion: {name} {opt}"
            assert opt.lstrip("-") in zsh, f"zsh: {name} {opt}"
    if shutil.which("zsh", path=HOST_PATH):
        _host_run(["zsh", "-n", REPO / "packaging/completion/_syncwarden"])
    for page in ("syncwarden.8", "syncwarden.yaml.5"):
        r = _host_run(["groff", "-man", "-ww", "-z", "-Tutf8", REPO / "packaging/man" / page])
        assert r.stderr == "", r.stderr
    # every MESSAGE_ID is in syncwarden(8) too, and every config section in syncwarden.yaml(5)
    for mid in _message_ids().values():
        assert mid in man8
    man5 = (REPO / "packaging/man/syncwarden.yaml.5").read_text()
    sys.path.insert(0, str(REPO))
    try:
        from supervisor.config import TOP_KEYS
    finally:
        sys.path.remove(str(REPO))
    for key in TOP_KEYS:
        assert re.search(rf"^\.B[RI]? {key}\b", man5, re.M), key


def test_bash_completion_completes_commands_options_and_links(tmp_path):
    lib = Path("/usr/share/bash-completion/bash_completion")
    if not lib.exists():
        pytest.skip("bash-completion is not installed (apt-get install bash-completion)")
    conf = tmp_path / "sw.yaml"
    conf.write_text("links:\n  replica1: {host: a, port: 1}\n  east-2: {host: b, port: 2}\n")

    def complete(line: str) -> list[str]:
        script = (f"source {lib}; source {REPO}/packaging/completion/syncwarden\n"
                  f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}\n"
                  "read -ra COMP_WORDS <<<\"$COMP_LINE\"\n"
                  "[[ $COMP_LINE == *' ' ]] && COMP_WORDS+=('')\n"
                  "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n"
                  "_syncwarden; printf '%s\\n' \"${COMPREPLY[@]}\"")
        return sorted(_host_run(["bash", "-c", script]).stdout.split())

    assert complete("syncwarden ho") == ["hold"]
    assert complete("syncwarden st") == ["status"]
    assert complete("syncwarden dr") == ["drain"]
    assert complete(f"syncwarden -c {conf} hold ") == ["east-2", "replica1"]
    assert complete(f"syncwarden --config {conf} status r") == ["replica1"]
    assert complete("syncwarden drain --") == ["--all", "--config", "--help", "--instance",
                                               "--wait"]
    assert complete(f"syncwarden hold -c {conf} ") == ["east-2", "replica1"]
    assert complete(f"syncwarden status --config {conf} r") == ["replica1"]
    assert complete("syncwarden d") == ["demote", "drain"]        # not the internal daemon
    assert complete("syncwarden rel") == ["release", "reload"]
    assert complete("syncwarden status --j") == ["--json"]
    assert complete("syncwarden quarantine ") == ["drop", "list", "retry"]
    assert complete("syncwarden quarantine drop bob --") == ["--help", "--link", "--yes"]
    assert complete("syncwarden failover --") == ["--config", "--force", "--help",
                                                  "--instance", "--yes"]
    assert complete(f"syncwarden -c {conf} quarantine retry bob --link e") == ["east-2"]


def test_versions_agree():
    version = _version()
    assert f'version = "{version}"' in (REPO / "pyproject.toml").read_text()
    assert (REPO / "packaging/debian/changelog").read_text().startswith(f"syncwarden ({version})")
    assert re.search(rf"^Version: +{re.escape(version)}$",
                     (REPO / "packaging/rpm/syncwarden.spec").read_text(), re.M)
    for page in ("syncwarden.8", "syncwarden.yaml.5"):
        head = (REPO / "packaging/man" / page).read_text().splitlines()[0]
        assert f'"syncwarden {version}"' in head, page


# --- the .deb in a real systemd with real Cyrus ------------------------------------------------

class DebSyncwarden(Syncwarden):
    """syncwarden installed from the .deb, configured as an admin would."""

    def prepare(self) -> None:
        # The host's policy-rc.d (exit 101) shows through the overlay; a real system has none,
        # so that the maintainer scripts start, restart and stop units. Removed inside only.
        self.sb.run("rm", "-f", "/usr/sbin/policy-rc.d")

    def dpkg_install(self, deb: Path):
        dest = f"/root/debs/{deb.name}"
        hp = self.sb.host_path(dest)
        hp.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(deb, hp)
        return self.sb.run("dpkg", "-i", dest, env={"DEBIAN_FRONTEND": "noninteractive"})

    def configure_link(self) -> str:
        """The admin's edit of the conffile: replica1 of the lab, whose master's Cyrus
        configdirectory is not Debian's /var/lib/cyrus (the sandbox must allow it as it is)."""
        self.configure(links=["replica1"], drain_timeout="60s")
        return self.sb.read_file("/etc/syncwarden/syncwarden.yaml")

    def install_enable_live(self, deb: Path) -> str:
        """dpkg -i, configure the link, enable --now, wait for live; returns the config."""
        self.dpkg_install(deb)
        config = self.configure_link()
        self.sb.systemctl("enable", "--now", "syncwarden")
        assert self.wait_state("replica1", "live")
        return config

    def package_status(self) -> str:
        return self.sb.run("dpkg-query", "-W", "-f=${Status} ${Version}", "syncwarden",
                           check=False).stdout.strip()

    def active(self, unit="syncwarden") -> str:
        return self.sb.systemctl("is-active", unit, check=False).stdout.strip()

    def sandbox_errors(self) -> list[str]:
        """Journal lines of the daemon that say the sandbox refused something."""
        return [x for x in self.sb.journal(unit="syncwarden.service")
                if re.search(r"Read-only file system|Permission denied|Operation not permitted", x)]


def _exposure(sb) -> float:
    out = sb.run("systemd-analyze", "security", "--no-pager", "syncwarden.service").stdout
    return float(re.search(r"Overall exposure level for syncwarden.service: ([\d.]+)", out)[1])


@pytest.fixture
def deb_sw(sandbox, cyrus):
    sw = DebSyncwarden(sandbox, cyrus)
    sw.prepare()
    return sw


@pytest.mark.trixie
@pytest.mark.cyrus(replicas=["replica1"])
def test_deb_installs_disabled_then_replicates_and_explains_itself(sandbox, cyrus, deb_sw, debs):
    sw = deb_sw
    sw.dpkg_install(debs.deb)
    assert sw.package_status() == f"install ok installed {debs.version}"
    # installed disabled and not started: the example config names a replica that is not there
    assert sandbox.systemctl("is-enabled", "syncwarden", check=False).stdout.strip() == "disabled"
    assert sw.active() == "inactive"
    # Debian's python3 and packages only; our "supervisor" cannot clash with Debian's
    assert sandbox.run("syncwarden", "--version").stdout.strip() == f"syncwarden {debs.version}"
    clash = sandbox.run("/usr/bin/python3", "-c", "import supervisor", check=False)
    assert "No module named 'supervisor'" in clash.stderr
    assert sandbox.run("man", "-w", "syncwarden").stdout.strip().endswith("man8/syncwarden.8.gz")
    assert sandbox.run("man", "-w", "5", "syncwarden.yaml").stdout.strip()
    catalog = sandbox.run("journalctl", "--list-catalog").stdout
    assert all(mid in catalog for mid in _message_ids().values())

    sw.configure_link()
    sw.cli("check-config")
    sandbox.systemctl("enable", "--now", "syncwarden")
    assert sw.wait_state("replica1", "live")
    accepted = cyrus.deliver_many(USERS, 20, "pkg")
    assert sum(len(v) for v in accepted.values()) == 100
    assert wait_same(cyrus, "replica1", USERS) == {}
    assert all(len(cyrus.messages("replica1", u)) == 20 for u in USERS)
    assert sw.wait_state("replica1", "live")
    link = sw.link("replica1")
    assert link["state_code"] == 2 and link["worker"]["active"] is True

    # journalctl -x explains the state change from the catalog
    explained = sandbox.run("journalctl", "-x", "-u", "syncwarden", "--no-pager").stdout
    assert "Subject: Replication link replica1 is now live (was catching-up)" in explained
    assert "Defined-By: syncwarden" in explained
    assert "Reason: backlog within live thresholds" in explained
    assert any(e["SYNCWARDEN_TO"] == "live" for e in sw.transitions("replica1"))

    # sandboxed as the unit says, and nothing it does is refused by the sandbox (stop drains)
    unit = (debs.tree / "units/syncwarden.service").read_text()
    protect = re.search(r"^ProtectSystem=(\w+)$", unit, re.M)[1]
    props = sandbox.run("systemctl", "show", "-p", "ProtectSystem,NoNewPrivileges,PrivateTmp",
                        "syncwarden").stdout.split()
    assert sorted(props) == ["NoNewPrivileges=yes", "PrivateTmp=yes", f"ProtectSystem={protect}"]
    exposure = _exposure(sandbox)
    print(f"systemd-analyze security syncwarden.service: {exposure}")
    assert exposure <= 3.0
    cyrus.deliver_many(USERS, 5, "before-stop")
    sandbox.systemctl("stop", "syncwarden", timeout=180)
    assert sw.active() == "inactive"
    assert log_lines(sandbox, cyrus, "replica1") == {"log": 0, "log-run": 0}
    assert sw.sandbox_errors() == []


@pytest.mark.trixie
@pytest.mark.cyrus(replicas=["replica1"])
def test_deb_upgrade_with_a_backlog_loses_nothing(sandbox, cyrus, deb_sw, debs):
    sw = deb_sw
    config = sw.install_enable_live(debs.deb)
    sw.cli("hold", "replica1")
    assert sw.wait_state("replica1", "down")
    accepted = cyrus.deliver_many(USERS, 30, "backlog", sessions=2)
    assert sum(len(v) for v in accepted.values()) == 150
    queued = log_lines(sandbox, cyrus, "replica1")
    assert queued["log"] + queued["log-run"] >= 300       # APPEND + MAILBOX per message
    pid = sw.main_pid()

    sw.dpkg_install(debs.upgrade)                         # restarts the daemon
    assert sw.package_status() == f"install ok installed {debs.upgrade_version}"
    assert sandbox.systemctl("is-enabled", "syncwarden", check=False).stdout.strip() == "enabled"
    assert sw.active() == "active" and sw.main_pid() not in (0, pid)
    assert sandbox.read_file("/etc/syncwarden/syncwarden.yaml") == config   # conffile kept
    assert sw.wait_state("replica1", "down")
    assert sw.link("replica1")["held"] is True            # operator state survived the upgrade

    sw.cli("resume", "replica1")
    assert sw.wait_state("replica1", "live", timeout=60)
    assert wait_same(cyrus, "replica1", USERS) == {}      # same UIDs and GUIDs: nothing lost
    assert all(len(cyrus.messages("replica1", u)) == 30 for u in USERS)
    deadline = time.monotonic() + 30
    while log_lines(sandbox, cyrus, "replica1") != {"log": 0, "log-run": 0}:
        assert time.monotonic() < deadline, log_lines(sandbox, cyrus, "replica1")
        time.sleep(0.5)
    started = sw.journal_messages(message_id="10bea557b4494183b2a264fc5fa7ce75")
    assert len(started) == 2                              # before and after the upgrade
    assert sw.sandbox_errors() == []


@pytest.mark.trixie
@pytest.mark.cyrus(replicas=["replica1"])
def test_deb_upgrade_under_delivery_keeps_the_worker_and_drains_nothing(sandbox, cyrus, deb_sw,
                                                                        debs):
    """dpkg -i of a newer version restarts the daemon (postinst: deb-systemd-invoke restart):
    a restart, not a stop, so nothing is drained and the worker runs on throughout."""
    sw = deb_sw
    sw.install_enable_live(debs.deb)
    worker = "syncwarden-sync@replica1.service"

    def worker_pid():
        return int(sandbox.run("systemctl", "show", "-p", "MainPID", "--value", worker)
                   .stdout.strip())
    before, daemon = worker_pid(), sw.main_pid()
    assert before > 0
    cursor = sandbox.journal_cursor()
    cyrus.stream(USERS, rate=20, accepted="/var/lib/lab-accepted.txt")
    time.sleep(3)
    sw.dpkg_install(debs.upgrade)
    assert sw.package_status() == f"install ok installed {debs.upgrade_version}"
    assert sw.main_pid() not in (0, daemon)                # restarted ...
    assert worker_pid() == before                          # ... around the same worker
    time.sleep(2)
    sandbox.systemctl("stop", "lab-deliver")
    accepted = sandbox.read_file("/var/lib/lab-accepted.txt").split()
    assert len(accepted) > 50
    assert sw.wait_state("replica1", "live", timeout=60)
    assert wait_same(cyrus, "replica1", USERS) == {}
    assert sum(len(cyrus.messages("replica1", u)) for u in USERS) == len(accepted)
    assert worker_pid() == before
    entries = [json.loads(x) for x in sandbox.run(
        "journalctl", "--no-pager", "-o", "json", "-u", "syncwarden.service", "--after-cursor",
        cursor).stdout.splitlines() if x.strip()]
    assert not [e for e in entries if e.get("MESSAGE_ID") == "1298f2b758144975a8594738b542a373"]
    assert any("stopped for a restart" in str(e.get("MESSAGE")) for e in entries)
    assert sw.sandbox_errors() == []


@pytest.mark.cyrus(replicas=["replica1"])
def test_deb_remove_keeps_config_and_purge_removes_config_and_state(sandbox, cyrus, deb_sw, debs):
    sw = deb_sw
    config = sw.install_enable_live(debs.deb)
    cyrus.deliver_many(USERS, 5, "pre-remove")
    assert wait_same(cyrus, "replica1", USERS) == {}
    sw.cli("hold", "replica1")                            # some state under /var/lib/syncwarden
    assert sandbox.host_path("/var/lib/syncwarden/holds.json").exists()
    apt = {"DEBIAN_FRONTEND": "noninteractive"}

    sandbox.run("apt-get", "remove", "-y", "syncwarden", env=apt, timeout=300)
    assert sw.package_status().startswith("deinstall ok config-files")
    assert sw.active() == "inactive"                      # stopped cleanly, not failed
    assert sw.active("syncwarden-sync@replica1.service") == "inactive"
    assert sw.sync_clients("replica1") == []
    assert sandbox.read_file("/etc/syncwarden/syncwarden.yaml") == config
    assert sandbox.host_path("/var/lib/syncwarden/holds.json").exists()
    for gone in ("/usr/bin/syncwarden", "/usr/lib/syncwarden",
                 "/usr/lib/systemd/system/syncwarden.service",
                 "/usr/lib/systemd/catalog/syncwarden.catalog"):
        assert not sandbox.host_path(gone).exists(), gone
    assert "syncwarden" not in sandbox.run("journalctl", "--list-catalog").stdout
    stopped = sw.journal_messages(message_id="870f0fe792d04652b89c7a68e2d59f88")
    assert stopped and "exiting on an error" not in stopped[-1]["MESSAGE"]

    sandbox.run("apt-get", "purge", "-y", "syncwarden", env=apt, timeout=300)
    status = sw.package_status()                          # dpkg no longer knows it
    assert "config-files" not in status and "ok installed" not in status, status
    for gone in ("/etc/syncwarden/syncwarden.yaml", "/var/lib/syncwarden", "/run/syncwarden",
                 "/etc/systemd/system/multi-user.target.wants/syncwarden.service"):
        assert not sandbox.host_path(gone).exists(), gone
