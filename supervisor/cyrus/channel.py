"""One sync channel's directory, ``{configdirectory}/sync/<channel>/``, and its files.

What Cyrus keeps there (imap/sync_log.c, imap/sync_client.c):
- ``log``: appended by every Cyrus writer under an fcntl lock;
- ``log-run``: ``log`` renamed by sync_client when it starts a pass (without the lock), read
  and unlinked after a good pass, reprocessed first by the next one after a failed pass;
- ``shutdown``: the file ``sync_client -F`` watches; it exits (and unlinks it) once it has
  finished the file it is on. Cyrus does not create the directory until it logs something.

The directory belongs to the cyrus user and syncwarden runs as root, so nothing here writes
through a name cyrus could have planted: the directory is opened by a walk that follows a
symbolic link only where no one but root (or ourselves) could have made it, and with
O_DIRECTORY|O_NOFOLLOW at the end; files are opened relative to that descriptor with
O_NOFOLLOW (and O_NONBLOCK: a FIFO must not hang the daemon), must be regular files with one
link, and new files are created with O_EXCL. Reading follows the same rules.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from contextlib import contextmanager
from pathlib import Path

from . import synclog

LOG = "log"
LOG_RUN = "log-run"
SHUTDOWN = "shutdown"
_CHUNK = 4 << 20
_MAX_HOPS = 40

log = logging.getLogger(__name__)


class UnsafeFile(OSError):
    """A name in the channel directory that root must not write through (a symbolic link, a
    FIFO, a file with other hard links...), or a directory reached through a planted link."""

    def __init__(self, path, why: str):
        super().__init__(errno.EPERM, f"refused: {why}", str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


# -- the safe primitives (also used by rewrite.py) ----------------------------------------------

def open_dir(path: Path) -> int:
    """A descriptor of directory ``path``, reached without following any symbolic link that a
    user other than root (or our own euid) could have planted: a link is followed only if it
    is owned by root or us and sits in a directory that only root or we can change (or a
    sticky one). Raises UnsafeFile, FileNotFoundError or NotADirectoryError."""
    me = {0, os.geteuid()}
    parts = [p for p in str(Path(path).absolute()).split("/") if p]
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    hops = 0
    try:
        while parts:
            name = parts.pop(0)
            if name == ".":
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                here = os.fstat(fd)
                if (st.st_uid not in me or here.st_uid not in me or hops > _MAX_HOPS or
                        (here.st_mode & 0o022 and not here.st_mode & stat.S_ISVTX)):
                    raise UnsafeFile(path, f"{name} is a symbolic link others could have"
                                     " planted" if hops <= _MAX_HOPS else "too many links")
                target = os.readlink(name, dir_fd=fd)
                parts[:0] = [p for p in target.split("/") if p]
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                continue
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_file(dir_fd: int, name: str, flags: int, where: Path, mode: int = 0o600) -> int:
    """Open ``name`` in the directory ``dir_fd`` without following a link; refuse anything but
    a regular file with a single link (a hard link to a file elsewhere would be written too)."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode,
                     dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:     # O_NOFOLLOW met a symbolic link
            raise UnsafeFile(where / name, "a symbolic link") from None
        raise
    try:
        check_file(os.fstat(fd), where / name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_file(st: os.stat_result, path: Path) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(path, "not a regular file")
    if st.st_nlink != 1:
        raise UnsafeFile(path, f"has {st.st_nlink} hard links")


def names_file(dir_fd: int, name: str, st: os.stat_result) -> bool:
    """Does ``name`` still name the file ``st`` describes (not renamed or replaced)?"""
    try:
        cur = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino)


# -- the channel ---------------------------------------------------------------------------------

class Channel:
    """The files of one channel directory, as syncwarden reads and asks for them."""

    def __init__(self, sync_dir: Path):
        self.dir = Path(sync_dir)
        self.log = self.dir / LOG
        self.log_run = self.dir / LOG_RUN
        self.shutdown = self.dir / SHUTDOWN        # what sync_client -F is given

    @contextmanager
    def opened(self):
        """The directory's descriptor (see open_dir); FileNotFoundError if Cyrus has not made
        it yet."""
        fd = open_dir(self.dir)
        try:
            yield fd
        finally:
            os.close(fd)

    def present(self) -> tuple[bool, bool]:
        """(log-run exists, log exists). Files are counted, not identified: Cyrus unlinks
        log-run and creates a new log all the time, and inode numbers get reused."""
        return self.log_run.exists(), self.log.exists()

    def pending(self) -> bool:
        """Is there anything to send (log-run or log)?"""
        return any(self.present())

    def existing(self) -> list[Path]:
        """The log files present, in the order sync_client sends them."""
        return [p for p in (self.log_run, self.log) if p.exists()]

    def request_shutdown(self) -> bool:
        """Create the shutdown file. False where Cyrus has not made the channel directory (we
        never create a root-owned directory Cyrus could not write its log into) or where
        something other than a regular file holds the name (refused, never written through):
        the caller stops the worker by signal instead."""
        try:
            with self.opened() as d:
                try:
                    fd = os.open(SHUTDOWN, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=d)
                    os.close(fd)
                except FileExistsError:
                    st = os.stat(SHUTDOWN, dir_fd=d, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        raise UnsafeFile(self.shutdown, "exists and is not a regular file")
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False
        except UnsafeFile as exc:
            log.warning("shutdown file not written: %s", exc)
            return False

    def clear_shutdown(self) -> bool:
        """Remove the shutdown file (unlink never follows a link); False if there was none."""
        try:
            with self.opened() as d:
                os.unlink(SHUTDOWN, dir_fd=d)
            return True
        except FileNotFoundError:
            return False

    def remove(self) -> list[str]:
        """Delete the channel's files (a retired link's: nothing will send them) and then the
        directory if it is empty; returns the names removed. unlink never follows a link and
        the directory is reached the safe way (open_dir); Cyrus makes it again if it logs."""
        removed = []
        try:
            with self.opened() as d:
                for name in (LOG_RUN, LOG, SHUTDOWN):
                    try:
                        os.unlink(name, dir_fd=d)
                        removed.append(name)
                    except FileNotFoundError:
                        pass
            fd = open_dir(self.dir.parent)
            try:
                os.rmdir(self.dir.name, dir_fd=fd)
            finally:
                os.close(fd)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:   # Cyrus logged meanwhile: the directory stays
                raise
        return removed

    def lines(self, name: str):
        """The lines of one file, streamed in chunks (an absent file has none)."""
        try:
            with self.opened() as d:
                fd = open_file(d, name, os.O_RDONLY, self.dir)
        except FileNotFoundError:
            return
        carry = b""
        try:
            while True:
                block = os.read(fd, _CHUNK)
                if not block:
                    break
                lines = (carry + block).split(b"\n")
                carry = lines.pop()
                yield from lines
        finally:
            os.close(fd)
        if carry:
            yield carry

    def users_in(self, name: str) -> set[str]:
        """Users named by the entries of one file (streamed, in batches of lines so that
        memory stays bounded; an absent file names nobody)."""
        found: set[str] = set()
        lines = self.lines(name)
        while batch := list(itertools.islice(lines, 65536)):
            found |= synclog.users_of(batch)
        return found

    def entries_pending(self):
        """The entries still to send, log-run's first, as Cyrus's reader takes them apart."""
        for name in (LOG_RUN, LOG):
            for line in self.lines(name):
                entry = synclog.parse(line)
                if entry is not None:
                    yield entry

    def users_pending(self) -> set[str]:
        """Users with entries still to send (log-run and log)."""
        return self.users_in(LOG_RUN) | self.users_in(LOG)
