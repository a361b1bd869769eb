"""Which Debian release a test container runs, and where its root comes from.

Each container's root is an overlay whose lower layer is either this machine's own root (for
the release this machine runs) or a root of another release that scripts/make-root made once
with debootstrap and cached under /var/cache/syncwarden-test/<release>-root. So on a Debian 12
machine "bookworm" is / and "trixie" the cached root, and on a Debian 13 machine the other way
round. Users, groups, binaries and packages inside are always the container root's own.

Selection (see conftest.py): SYNCWARDEN_TEST_ROOT=trixie, or pytest --root trixie, runs every
system test on that release; without either, every system test runs on bookworm and the
smoke set (marked ``trixie``) on trixie too.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

RELEASES = {"bookworm": "12", "trixie": "13"}     # codename: Debian version
DEFAULT = "bookworm"
CACHE = Path(os.environ.get("SYNCWARDEN_TEST_CACHE", "/var/cache/syncwarden-test"))
MAKE_ROOT = Path(__file__).resolve().parents[2] / "scripts" / "make-root"


class RootError(RuntimeError):
    pass


def check_release(release: str) -> str:
    if release not in RELEASES:
        raise RootError(f"unknown release {release!r} (known: {', '.join(RELEASES)})")
    return release


def os_release(root: Path = Path("/")) -> dict[str, str]:
    out = {}
    for name in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, eq, value = line.partition("=")
            if eq:
                out[key.strip()] = value.strip().strip('"')
        break
    return out


def host_release() -> str | None:
    """This machine's codename, if it is one of RELEASES."""
    code = os_release().get("VERSION_CODENAME")
    return code if code in RELEASES else None


def lower_dir(release: str) -> Path:
    """The overlay's lower layer for a container of this release."""
    check_release(release)
    return Path("/") if release == host_release() else CACHE / f"{release}-root"


def missing(release: str) -> str | None:
    """Why containers of this release cannot run here (a skip reason), or None."""
    check_release(release)
    if release == host_release():
        return None
    root = lower_dir(release)
    if not root.is_dir():
        return f"no Debian {RELEASES[release]} root at {root} (scripts/setup makes it)"
    r = subprocess.run([str(MAKE_ROOT), "--check", release], capture_output=True)
    if r.returncode != 0:
        return f"{root} is out of date with scripts/root-packages (scripts/setup rebuilds it)"
    return None


def selected() -> str | None:
    """SYNCWARDEN_TEST_ROOT, checked; None when unset."""
    value = os.environ.get("SYNCWARDEN_TEST_ROOT", "").strip()
    return check_release(value) if value else None
