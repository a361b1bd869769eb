"""Fixtures for system tests: a fresh systemd container per test, and a Cyrus lab inside it.

    def test_x(sandbox): ...                        # booted container (Sandbox)
    def test_y(cyrus): ...                          # CyrusLab: master + replica1 + replica2 up,
                                                    # user INBOXes created on the master
    @pytest.mark.cyrus(users=[f"u{i:02}" for i in range(1, 21)], replicas=["replica1"])
    def test_z(cyrus): ...                          # other users / replicas

Every test in this folder is marked `system` and skipped (with the reason) where it cannot run:
not root, or systemd-nspawn / Cyrus not installed (scripts/setup installs them), or the
Debian root it asks for not made yet (scripts/setup makes it: see roots.py).

Which Debian runs inside (the `release` fixture, which `sandbox` uses):
- by default every test runs on Debian 12 (bookworm), and the smoke set, the tests marked
  ``@pytest.mark.trixie``, also on Debian 13 (trixie): those have ids ending in [bookworm] and
  [trixie];
- SYNCWARDEN_TEST_ROOT=trixie (or bookworm) runs every test on that release only.
"""

import itertools
import os
import shutil
from pathlib import Path

import pytest

from . import roots
from .cyruslab import BIN, DEFAULT_USERS, CyrusLab
from .sandbox import Sandbox, cleanup_stale

HERE = Path(__file__).parent
_names = itertools.count(1)
# Engineers sharing a host tell their containers apart by a prefix of their own (e.g. "drain-").
_PREFIX = os.environ.get("SYNCWARDEN_SANDBOX_PREFIX", "")


_MISSING: dict[str, str | None] = {}
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _missing(release: str) -> str | None:
    if release not in _MISSING:
        _MISSING[release] = _find_missing(release)
    return _MISSING[release]


def _find_missing(release: str) -> str | None:
    if os.geteuid() != 0:
        return "system tests need root (they mount an overlay and boot systemd-nspawn)"
    for tool, pkg in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"),
                      ("nft", "nftables")):
        if not shutil.which(tool, path=HOST_PATH):
            return f"{tool} not found (apt-get install {pkg}, or run scripts/setup)"
    reason = roots.missing(release)
    if reason:
        return reason
    root = roots.lower_dir(release)        # what the container will have, not the host
    for prog, pkg in [(f"{BIN}/{p}", "cyrus-imapd and cyrus-replication")
                      for p in ("master", "imapd", "lmtpd", "sync_client", "sync_server")] + \
            [("/usr/sbin/saslpasswd2", "sasl2-bin")]:
        if not os.access(root / prog.lstrip("/"), os.X_OK):
            return f"{prog} not found in {root} (install {pkg}: scripts/setup)"
    return None


def _default_release() -> str:
    return roots.selected() or roots.DEFAULT


def pytest_configure(config):
    config.addinivalue_line("markers", "cyrus(users=..., replicas=...): options for the cyrus fixture")
    config.addinivalue_line("markers", "trixie: in the smoke set that also runs on Debian 13"
                            " (see tests/system/conftest.py)")
    config.addinivalue_line("markers", "matrix: the fault matrix on the two-host lab (issue 11);"
                            " select it with -m matrix")


def pytest_terminal_summary(terminalreporter):
    from .matrix import LINES

    if LINES:     # the figures of the fault matrix, whatever -s says
        terminalreporter.section("fault matrix")
        for line in LINES:
            terminalreporter.write_line(line)


def pytest_generate_tests(metafunc):
    # The smoke set runs on both releases, unless SYNCWARDEN_TEST_ROOT picks one for everything.
    if "release" in metafunc.fixturenames and metafunc.definition.get_closest_marker("trixie") \
            and roots.selected() is None:
        metafunc.parametrize("release", [roots.DEFAULT, "trixie"], indirect=True,
                             scope="session")


def _release_of(item) -> str:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("release") if callspec and "release" in callspec.params \
        else _default_release()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.system)
            reason = _missing(_release_of(item))
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the item, so fixtures can tell whether the test failed.
    report = (yield).get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def release(request) -> str:
    """The Debian release (codename) the test's containers run: see the module docstring."""
    return getattr(request, "param", None) or _default_release()


@pytest.fixture
def sandbox(request, release):
    """A freshly booted container, stopped and unmounted after the test whatever happened."""
    cleanup_stale()
    sb = Sandbox(f"{_PREFIX}sw{next(_names)}-{os.getpid()}", release=release)
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
