"""Reading /proc as hostile: bounded reads of regular files only, no symlink followed to a
file, a process that vanishes meanwhile skipped, names and fds looked at up to a limit.

Every function takes the proc root, so tests build a fake one. procs.py decides which of these
processes belong to a Cyrus instance; this module only reads what the kernel shows.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

LIMIT = 1 << 16            # bytes read from one /proc file (a command line is at most 2 MiB)
MAX_FDS = 1 << 16          # fds looked at per process
MAX_NAMES = 1 << 17        # names looked at in one directory


@dataclass(frozen=True)
class Proc:
    pid: int
    exe: str                # the binary, resolved by the kernel
    argv: tuple[str, ...]
    ppid: int

    @property
    def program(self) -> str:
        return os.path.basename(self.exe)


def read_file(path: Path, limit: int = LIMIT) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_link(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def names(folder: Path) -> list[str]:
    out = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                out.append(entry.name)
                if len(out) >= MAX_NAMES:
                    break
    except OSError:
        pass
    return out


def pids(root: Path) -> list[int]:
    return [int(n) for n in names(root) if n.isascii() and n.isdigit()]


def proc_of(root: Path, pid: int, exe: str) -> Proc | None:
    raw, st = read_file(root / str(pid) / "cmdline"), read_file(root / str(pid) / "stat", 4096)
    if raw is None or st is None:
        return None                       # gone meanwhile
    argv = tuple(a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0"))
    while argv and not argv[-1]:
        argv = argv[:-1]
    fields = st[st.rfind(b")") + 1:].split()   # "pid (comm) state ppid ...": comm may hold ")"
    ppid = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    return Proc(pid, exe, argv, ppid)


def exe_of(root: Path, pid: int) -> str | None:
    exe = read_link(root / str(pid) / "exe")
    if exe:
        return exe.removesuffix(" (deleted)")
    # /proc/PID/exe needs CAP_SYS_PTRACE for another user's process, which the daemon's unit
    # does not grant (it would also open /proc/PID/mem): what the process calls itself, then.
    raw = read_file(root / str(pid) / "cmdline", 4096)
    argv0 = raw.split(b"\0", 1)[0] if raw else b""
    return argv0.decode("utf-8", "surrogateescape") or None


def processes(root: Path, wanted) -> dict[int, Proc]:
    """{pid: Proc} of the processes in our mount namespace whose binary ``wanted(exe)``."""
    own = read_link(root / "self" / "ns" / "mnt")
    out = {}
    for pid in pids(root):
        exe = exe_of(root, pid)
        if not exe or not wanted(exe):
            continue
        ns = read_link(root / str(pid) / "ns" / "mnt")
        if own and ns and ns != own:
            continue
        proc = proc_of(root, pid, exe)
        if proc:
            out[pid] = proc
    return out


def unit_of(root: Path, pid: int) -> str | None:
    """The systemd unit (service or scope) a process runs in, from its cgroup."""
    for path in cgroups(root, pid):
        for part in reversed(path.split("/")):
            if part.endswith((".service", ".scope")):
                return part
    return None


def cgroups(root: Path, pid: int) -> list[str]:
    raw = read_file(root / str(pid) / "cgroup") or b""
    return [line.split(":", 2)[2] for line in raw.decode("utf-8", "replace").splitlines()
            if line.count(":") >= 2]


def boot_time(proc_root="/proc") -> float | None:
    """When the machine booted (/proc/stat's btime, seconds since the epoch)."""
    for line in (read_file(Path(proc_root) / "stat", 1 << 20) or b"").splitlines():
        if line.startswith(b"btime "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def start_time(pid: int, btime: float, hz: int, proc_root="/proc") -> float | None:
    """When a process started (wall clock), from /proc/PID/stat's field 22 (clock ticks after
    boot); None when it is gone."""
    raw = read_file(Path(proc_root) / str(pid) / "stat", 4096)
    fields = raw[raw.rfind(b")") + 1:].split() if raw else []    # fields[0] is field 3
    try:
        return btime + int(fields[19]) / hz
    except (IndexError, ValueError):
        return None
