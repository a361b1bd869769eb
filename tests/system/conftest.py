"""Fixtures for system tests: a fresh systemd container per test, and a Cyrus lab inside it.

    def test_x(sandbox): ...                        # booted container (Sandbox)
    def test_y(cyrus): ...                          # CyrusLab: master + replica1 + replica2 up,
                                                    # user INBOXes created on the master
    @pytest.mark.cyrus(users=[f"u{i:02}" for i in range(1, 21)], replicas=["replica1"])
    def test_z(cyrus): ...                          # other users / replicas

Every test in this folder is marked `system` and skipped (with the reason) where it cannot run:
not root, or systemd-nspawn / Cyrus not installed (scripts/setup installs them).
"""

import itertools
import os
import shutil
from pathlib import Path

import pytest

from .cyruslab import BIN, DEFAULT_USERS, CyrusLab
from .sandbox import Sandbox, cleanup_stale

HERE = Path(__file__).parent
_names = itertools.count(1)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "system tests need root (they mount an overlay and boot systemd-nspawn)"
    for tool, pkg in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"),
                      ("saslpasswd2", "sasl2-bin"), ("nft", "nftables")):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            return f"{tool} not found (apt-get install {pkg}, or run scripts/setup)"
    for prog in ("master", "imapd", "lmtpd", "sync_client", "sync_server"):
        if not os.access(f"{BIN}/{prog}", os.X_OK):
            return f"{BIN}/{prog} not found (install cyrus-imapd and cyrus-replication: scripts/setup)"
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "cyrus(users=..., replicas=...): options for the cyrus fixture")
    config.addinivalue_line("markers", "matrix: the fault matrix on the two-host lab (issue 11);"
                            " select it with -m matrix")


def pytest_terminal_summary(terminalreporter):
    from .matrix import LINES

    if LINES:     # the figures of the fault matrix, whatever -s says
        terminalreporter.section("fault matrix")
        for line in LINES:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.system)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the item, so fixtures can tell whether the test failed.
    report = (yield).get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def sandbox(request):
    """A freshly booted container, stopped and unmounted after the test whatever happened."""
    cleanup_stale()
    sb = Sandbox(f"sw{next(_names)}-{os.getpid()}")
    try:
        sb.start()
        yield sb
    finally:
        failed = any(getattr(getattr(request.node, f"report_{when}", None), "failed", False)
                     for when in ("setup", "call"))
        if sb.running and failed:
            # Shown by pytest under "Captured stdout teardown": the container is gone afterwards.
            try:
                print(f"--- journal of {sb.name} (last 200 lines) ---")
                print("\n".join(sb.journal(lines=200)))
                # what the supervisor and its units said, without the mail traffic around it
                r = sb.run("journalctl", "--no-pager", "-n", "150", "-o", "short-monotonic",
                           "-u", "syncwarden*", check=False)
                print(f"--- syncwarden units of {sb.name} (last 150 lines) ---\n{r.stdout}")
                r = sb.run("syncwarden", "status", check=False)
                print(f"--- syncwarden status ---\n{r.stdout}{r.stderr}")
            except Exception as e:          # the dump must not hide the test's own failure
                print(f"(journal unavailable: {e})")
        sb.stop()


@pytest.fixture
def cyrus(sandbox, request):
    """CyrusLab with every instance started and the users' INBOXes created on the master."""
    opts = request.node.get_closest_marker("cyrus")
    kw = opts.kwargs if opts else {}
    lab = CyrusLab(sandbox, replicas=kw.get("replicas", ("replica1", "replica2")),
                   users=kw.get("users", DEFAULT_USERS))
    lab.setup()
    return lab
