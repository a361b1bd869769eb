"""State files (under /var/lib/syncwarden and /run/syncwarden), written durably and atomically.

Operator decisions (holds, role, quarantine) must survive daemon restarts, crashes and power
loss, so they live here rather than in memory. This module is the one place that writes such
files: a new file is written to a temporary name, fsync'ed, renamed over the old one, and the
directory is fsync'ed too (without that, a crash can lose the rename or the file's very
existence while its contents are on disk). Directories are created the same way.

The daemon runs as root: it never writes through a directory owned by another user (a symlink
planted on the way would otherwise redirect root's write), and it creates files with
O_EXCL|O_NOFOLLOW, so nothing planted at the temporary name is followed either.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from pathlib import Path

from .cyrus import CYRUS_USER

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeDirectory(PermissionError):
    """A state file's directory belongs to another user: root does not write there."""


def cyrus_gid() -> int | None:
    """The primary group of the Cyrus account (the group worker units run with), if any."""
    try:
        return pwd.getpwnam(CYRUS_USER).pw_gid
    except KeyError:
        return None


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int | None = None, gid: int | None = None) -> Path:
    """Create ``path`` and its missing parents, each made durable in its parent. ``mode`` and
    ``gid``, when given, are also enforced on an existing directory (the daemon's UMask would
    otherwise decide, and an older install may have left a wider mode)."""
    path = Path(path)
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o755 if mode is None or d != path else mode)
        except FileExistsError:
            pass   # made meanwhile (or not a directory: the open below says so)
        fsync_dir(d.parent)
    if mode is not None or gid is not None:
        st = os.stat(path)
        if gid is not None and st.st_gid != gid:
            os.chown(path, -1, gid)
        if mode is not None and stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)
    return path


def _open_dir(path: Path) -> int:
    """An fd for a state file's directory, refused when another user owns it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    owner = os.fstat(fd).st_uid
    if owner not in (0, os.geteuid()):
        os.close(fd)
        raise UnsafeDirectory(f"{path}: owned by uid {owner}, not root: refusing to write"
                              " state there")
    return fd


def atomic_write(path: Path, data: bytes, mode: int = 0o644, gid: int | None = None) -> None:
    """Replace ``path`` with ``data`` so that readers and a crash see the old file or the new
    one, whole, and the new one survives power loss once this returns."""
    path = Path(path)
    ensure_dir(path.parent)
    dfd = _open_dir(path.parent)
    tmp = f".{path.name[:64]}.{os.urandom(8).hex()}"
    try:
        fd = os.open(tmp, _CREATE, 0o600, dir_fd=dfd)
        try:
            _write_all(fd, data)
            os.fchmod(fd, mode)
            if gid is not None:
                os.fchown(fd, -1, gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(dfd)


def append(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Append ``data`` to ``path`` (created if missing) and make it durable; a symlink, a
    hard-linked or a non-regular file at ``path`` is refused."""
    path = Path(path)
    ensure_dir(path.parent)
    dfd = _open_dir(path.parent)
    try:
        try:
            fd, created = os.open(path.name, _CREATE | os.O_APPEND, mode, dir_fd=dfd), True
        except FileExistsError:
            flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
            fd, created = os.open(path.name, flags, dir_fd=dfd), False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise UnsafeDirectory(f"{path}: not a plain file with one link: refusing to"
                                      " append to it")
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            os.fsync(dfd)
    finally:
        os.close(dfd)


def unlink(path: Path) -> bool:
    """Remove ``path`` durably; False when it was not there."""
    path = Path(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Holds:
    """Links an operator has held (``syncwarden hold``): no worker until ``resume``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._held: set[str] = set()
        self.problem: str | None = None
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
                raise ValueError("expected a JSON list of link names")
            self._held = set(data)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, RecursionError) as exc:
            # Holding is the safe reading of a damaged file: say so, and keep the file.
            self.problem = f"{self.path}: {exc}; treating every link as held"
            self._held = {"*"}

    def __contains__(self, link: str) -> bool:
        return link in self._held or "*" in self._held

    def set(self, link: str, held: bool) -> None:
        if "*" in self._held:
            raise ValueError(self.problem)
        changed = (self._held | {link}) if held else (self._held - {link})
        atomic_write(self.path, json.dumps(sorted(changed)).encode() + b"\n")
        self._held = changed
