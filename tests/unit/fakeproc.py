"""A fake /proc tree in a folder: the few files cyrus_procs reads, written as the kernel does."""

from __future__ import annotations

import os
from pathlib import Path

BIN = "/usr/lib/cyrus/bin"
UNIX_HEADER = "Num       RefCount Protocol Flags    Type St Inode Path\n"


class FakeProc:
    def __init__(self, root: Path):
        self.root = root
        (root / "net").mkdir(parents=True)
        (root / "net" / "unix").write_text(UNIX_HEADER)

    def add(self, pid: int, exe: str, *argv: str, ppid: int = 1,
            cgroup: str = "/system.slice/cyrus-imapd.service", cwd: str = "/",
            fds: dict | None = None, retitled: str | None = None, start: int = 0) -> Path:
        """One process; ``retitled`` is what setproctitle left of its command line; ``start``
        its start time in clock ticks after boot (stat field 22)."""
        d = self.root / str(pid)
        (d / "fd").mkdir(parents=True)
        os.symlink(exe, d / "exe")
        os.symlink(cwd, d / "cwd")
        cmdline = retitled.encode() if retitled else b"".join(a.encode() + b"\0" for a in argv)
        (d / "cmdline").write_bytes(cmdline)
        comm = os.path.basename(exe)[:15]
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0"
                                f"{' 0' * 10} {start} 0 0\n")
        (d / "cgroup").write_text(f"0::{cgroup}\n")
        for fd, target in (fds or {}).items():
            os.symlink(target, d / "fd" / str(fd))
        return d

    def boot(self, btime: int) -> None:
        """/proc/stat's boot time (seconds since the epoch)."""
        (self.root / "stat").write_text(f"cpu  1 2 3 4\nbtime {btime}\nprocesses 99\n")

    def listen(self, inode: int, path: str, listening: bool = True) -> None:
        flags = "00010000" if listening else "00000000"
        with open(self.root / "net" / "unix", "a") as f:
            f.write(f"0000000000000000: 00000002 00000000 {flags} 0001 01 {inode} {path}\n")
