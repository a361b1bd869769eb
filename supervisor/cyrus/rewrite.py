"""Rewriting a channel's sync log while Cyrus uses it: moving entries out, putting them back.

Cyrus's side of the protocol (imap/sync_log.c): a writer opens ``log`` with O_APPEND, takes an
fcntl lock, checks that the name still names the inode it locked (else retries: it was renamed
to log-run), appends whole lines, fsyncs, unlocks. sync_client renames ``log`` to ``log-run``
WITHOUT the lock, then locks log-run once (to wait out a writer that held the lock over the
rename) and reads it through its own descriptor. So a name can change under a lock holder, but
an inode's content changes only under its lock, and sync_client reads an inode only after
locking it.

``move_out(path, users, sink)`` therefore works on the locked inode L, never on a name:
1. open ``log`` (or ``log-run``), lock L (an open-file-description lock: it conflicts with
   Cyrus's fcntl locks, and no other descriptor our process closes can drop it), check that the
   name still names L;
2. stream L in chunks: lines naming a user in ``users`` go to ``sink`` in batches (each call
   must have stored them durably when it returns: a crash after it duplicates, never loses);
   the rest is written to a new file T (O_EXCL, never through a link), fsynced;
3. swap T and L by name with renameat2(RENAME_EXCHANGE), atomic and unable to clobber anything,
   and look at what came back. If it is L, L is unlinked: writers waiting on L's lock find the
   name changed and retry on T. If it is a newer file, sync_client had renamed L to log-run and
   a writer created a new ``log`` meanwhile: the swap is undone (T stays locked, so no writer
   can use it in between), and L, which sync_client will read only after our lock, is rewritten
   in place with T's content (ftruncate, fsync). In place is also the way where the filesystem
   cannot swap.
At every moment before the swap the name holds the whole original; a crash leaves T behind,
which the next rewrite removes.

Precondition: ``log-run`` may be rewritten only while no sync_client of the channel runs
(``no_client=True`` says the caller made sure): a running sync_client may already be reading
it. ``log`` may be rewritten at any time.

Lines naming two users (``RENAME user.alice.Proj user.bob.Proj``, DOUBLEMAILBOX) and lines
naming a user and a shared mailbox leave the stream when any user they name is quarantined,
and are stored once, under the first such user in sorted order. ``sync_client -u alice`` does
not cover bob's (or the shared) part, so when alice is released such lines are put BACK into
the stream (``replay_after_user_sync``), where they go on to bob's store if bob is still held.

Off the main loop: ``move_out`` blocks (on the lock, on I/O, roughly 1 s a GB) and touches no
shared state, so the caller may run it in a worker thread, e.g.
``pool.submit(move_out, path, users, sink, cancelled=stopping.is_set)`` and collect the count
from the future on a later tick. ``sink`` then runs in that thread. ``cancelled`` is asked
between chunks; when it answers True the rewrite stops with Cancelled and L is left whole.
Only one rewrite of a file runs at a time: a second one waits for the first one's lock.

Every file operation is relative to a descriptor of the channel directory opened safely, with
O_NOFOLLOW, regular files with one link only (channel.py).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
from pathlib import Path
from typing import Callable

from . import synclog
from .channel import LOG, LOG_RUN, UnsafeFile, check_file, names_file, open_dir, open_file
from .splitter import CHUNK, Cancelled, split_stream

_LOCK_TRIES = 64
_RENAME_EXCHANGE = 2
_RENAME_NOREPLACE = 1

log = logging.getLogger(__name__)
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)       # glibc >= 2.28
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]


class _Flock(ctypes.Structure):
    _fields_ = [("l_type", ctypes.c_short), ("l_whence", ctypes.c_short),
                ("l_start", ctypes.c_longlong), ("l_len", ctypes.c_longlong),
                ("l_pid", ctypes.c_int)]


def lock(fd: int, wait: bool = True) -> None:
    """Write-lock the whole file through this open file description (F_OFD_SETLKW)."""
    req = bytes(_Flock(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, req)


def temp_name(name: str) -> str:
    return f".{name}.syncwarden"


def _rename2(dir_fd: int, a: str, b: str, flags: int) -> bool:
    """renameat2 within one directory; False where the kernel or filesystem cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(dir_fd, a.encode(), dir_fd, b.encode(), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


_WRITEBACK = 64 << 20
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong,
                                 ctypes.c_uint]


def _start_writeback(fd: int, offset: int, size: int) -> None:
    """sync_file_range(SYNC_FILE_RANGE_WRITE): queue the range for writing, without waiting."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, size, 2)


def _write_all(fd: int, views: list) -> None:
    views = [v for v in views if len(v)]
    while views:
        n = os.writev(fd, views[:512])
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        while n:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0] = memoryview(views[0])[n:]
                n = 0


def _copy(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from offset 0 of src to offset 0 of dst, a chunk at a time."""
    pos = 0
    while pos < size:
        block = os.pread(src, min(CHUNK, size - pos), pos)
        if not block:
            raise OSError(errno.EIO, "file shrank while being copied")
        _write_all_at(dst, block, pos)
        pos += len(block)


def _write_all_at(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


class _Locked:
    """``name`` in the channel directory, opened safely and locked, the lock taken on the
    inode the name still names."""

    def __init__(self, dir_fd: int, where: Path, name: str, create: bool = False):
        for _ in range(_LOCK_TRIES):
            created = False
            if create:
                try:
                    self.fd = os.open(name, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL |
                                      os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
                    created = True
                    owner = os.fstat(dir_fd)       # Cyrus's: it must stay writable for Cyrus
                    os.fchown(self.fd, owner.st_uid, owner.st_gid)
                except FileExistsError:
                    pass
            if not created:
                self.fd = open_file(dir_fd, name, os.O_RDWR | (os.O_APPEND if create else 0),
                                    where)
            try:
                lock(self.fd)
                self.st = os.fstat(self.fd)
                check_file(self.st, where / name)
                if names_file(dir_fd, name, self.st):
                    self.created = created
                    return
            except BaseException:
                os.close(self.fd)
                raise
            os.close(self.fd)            # renamed under us: try the file that has the name now
        raise OSError(errno.EAGAIN, f"renamed under us {_LOCK_TRIES} times in a row",
                      str(where / name))

    def close(self) -> None:
        os.close(self.fd)                # releases the lock


class _Out:
    """The kept bytes. Until the first moved line they are exactly L's prefix, so nothing is
    written: a log with nothing to move costs one read."""

    def __init__(self, dir_fd: int, where: Path, name: str, src: _Locked):
        self.dir_fd, self.where, self.name, self.src = dir_fd, where, name, src
        self.fd: int | None = None
        self.st: os.stat_result | None = None
        self.prefix = 0
        self.size = 0
        self.views: list = []
        self.pending = 0
        self.synced = 0                  # bytes whose writeback was started

    def keep(self, view) -> None:
        if not len(view):
            return
        self.size += len(view)
        if self.fd is None:
            self.prefix += len(view)
            return
        self.views.append(view)
        self.pending += len(view)
        if self.pending >= CHUNK:
            self.flush()

    def keep_around(self, data: bytes, start: int, end: int, hits: list) -> None:
        """Keep data[start:end] but the lines in ``hits`` ((start, end, user), in order)."""
        view = memoryview(data)
        if not hits:
            self.keep(view[start:end])
            return
        self.start()
        views, prev, n = self.views, start, 0
        for ls, le, _ in hits:
            if ls > prev:
                views.append(view[prev:ls])
                n += ls - prev
            prev = le
        if end > prev:
            views.append(view[prev:end])
            n += end - prev
        self.size += n
        self.pending += n
        if self.pending >= CHUNK:
            self.flush()

    def start(self) -> None:
        if self.fd is not None:
            return
        self.fd = _create_temp(self.dir_fd, self.where, temp_name(self.name))
        self.st = os.fstat(self.fd)
        _copy(self.src.fd, self.fd, self.prefix)
        os.lseek(self.fd, self.prefix, os.SEEK_SET)

    def flush(self) -> None:
        # a few long pieces are written as they are; thousands of short ones joined first
        views = self.views if len(self.views) <= 16 else [b"".join(self.views)]
        _write_all(self.fd, views)
        self.views, self.pending = [], 0
        written = self.size - self.synced
        if written >= _WRITEBACK:        # start writing to disk now: the final fsync waits less
            _start_writeback(self.fd, self.synced, written)
            self.synced = self.size


def _create_temp(dir_fd: int, where: Path, name: str) -> int:
    """T, created new (O_EXCL|O_NOFOLLOW). Whatever holds the name is removed first, never
    followed: a T left by a crash, or something cyrus planted there."""
    for attempt in range(2):
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                           os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            if attempt:
                raise UnsafeFile(where / name, "keeps reappearing") from None
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                log.warning("%s: removed a %s planted at our temporary file's name",
                            where / name, "symbolic link" if stat.S_ISLNK(st.st_mode)
                            else "non-regular file")
            os.unlink(name, dir_fd=dir_fd)         # unlinkat removes the link, not its target
    raise AssertionError("not reached")


def move_out(path: Path, users: set[str], sink: Callable[[dict[str, list[bytes]]], None], *,
             no_client: bool = False, hook: Callable[[str], None] | None = None,
             cancelled: Callable[[], bool] | None = None, chunk: int = CHUNK) -> int:
    """Move the lines naming ``users`` from ``path`` (a channel's log or log-run) to
    ``sink({user: [lines]})``; returns how many were moved. See the module docstring for the
    protocol, the precondition on log-run (``no_client``), and running it in a thread.
    ``hook(step)`` is called between steps (for tests that race Cyrus against each step)."""
    path = Path(path)
    if path.name not in (LOG, LOG_RUN):
        raise ValueError(f"{path}: only {LOG} and {LOG_RUN} of a channel are rewritten")
    if path.name == LOG_RUN and not no_client:
        raise ValueError(f"{path}: log-run is rewritten only while no sync_client of the channel"
                         " runs (no_client=True once the caller has made sure)")
    if not users:
        return 0
    hook = hook or (lambda step: None)
    try:
        dir_fd = open_dir(path.parent)
    except FileNotFoundError:
        return 0
    try:
        try:
            src = _Locked(dir_fd, path.parent, path.name)
        except FileNotFoundError:
            return 0
        try:
            hook("locked")
            out = _Out(dir_fd, path.parent, path.name, src)
            try:
                moved = split_stream(src.fd, out, users, sink, hook, cancelled, chunk)
                if not moved:
                    return 0
                out.flush()
                _finish(dir_fd, path, src, out, hook)
                return moved
            finally:
                if out.fd is not None:
                    os.close(out.fd)
                    _unlink_if(dir_fd, temp_name(path.name), out)
        finally:
            src.close()
    finally:
        os.close(dir_fd)


def _unlink_if(dir_fd: int, name: str, out: _Out) -> None:
    """Remove T if it is still at its name (after a failure or cancel; a success moved it)."""
    try:
        if out.st is not None and names_file(dir_fd, name, out.st):
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _finish(dir_fd: int, path: Path, src: _Locked, out: _Out, hook) -> None:
    """Put T's content in place of L's: by swapping names when nothing raced us, else in L."""
    name, tmp = path.name, temp_name(path.name)
    os.fchown(out.fd, src.st.st_uid, src.st.st_gid)
    os.fchmod(out.fd, stat.S_IMODE(src.st.st_mode))
    os.fsync(out.fd)
    lock(out.fd, wait=False)             # ours alone: no writer may use T before it is `name`
    hook("synced")
    try:
        swapped = _rename2(dir_fd, tmp, name, _RENAME_EXCHANGE)
    except FileNotFoundError:            # `name` is gone: L was renamed (to log-run)
        swapped = False
    hook("swapped")
    if swapped and names_file(dir_fd, tmp, src.st):
        os.unlink(tmp, dir_fd=dir_fd)    # L, under its temporary name
        os.fsync(dir_fd)
        hook("replaced")
        return
    if swapped:                          # a newer `name` came back: give it its name again
        _undo(dir_fd, path, tmp, name)
    _copy(out.fd, src.fd, out.size)      # in place: whoever reads L reads it after our lock
    os.ftruncate(src.fd, out.size)
    os.fsync(src.fd)
    log.info("%s: rewritten in place (it was renamed during the rewrite, or the filesystem"
             " cannot swap names)", path)
    hook("replaced")


def _undo(dir_fd: int, path: Path, tmp: str, name: str) -> None:
    """T is at ``name``, a newer file N at ``tmp``: put N back, whatever happened meanwhile."""
    try:
        if _rename2(dir_fd, tmp, name, _RENAME_EXCHANGE):
            return
    except FileNotFoundError:            # `name` (T) was renamed meanwhile: N back if free
        try:
            if _rename2(dir_fd, tmp, name, _RENAME_NOREPLACE):
                return
        except FileExistsError:
            pass
    # Last resort: N's entries are appended to `name` the way a writer does, then N goes.
    fd = open_file(dir_fd, tmp, os.O_RDWR, path.parent)
    try:
        lock(fd)
        size = os.fstat(fd).st_size
        lines, pos = [], 0
        while pos < size:
            lines.append(os.pread(fd, CHUNK, pos))
            pos += len(lines[-1])
        append(path, lines)
        os.unlink(tmp, dir_fd=dir_fd)
    finally:
        os.close(fd)


def append(path: Path, lines: list[bytes]) -> None:
    """Append entries to a channel's ``log`` the way a Cyrus writer does (for entries put
    back into the stream); a ``log`` we create is given to the directory's owner."""
    if not lines:
        return
    path = Path(path)
    dir_fd = open_dir(path.parent)
    try:
        f = _Locked(dir_fd, path.parent, path.name, create=True)
        try:
            _write_all(f.fd, list(lines))
            os.fsync(f.fd)
            if f.created:
                os.fsync(dir_fd)
        finally:
            f.close()
    finally:
        os.close(dir_fd)


def replay_after_user_sync(stored: list[bytes], user: str, synced_upto: int) -> list[bytes]:
    """What goes back into the stream when ``user`` is released after a successful
    ``sync_client -u user`` that began when the store held ``synced_upto`` bytes: the stored
    lines that sync did not cover (they name another user or a shared mailbox too), then every
    line stored after it began."""
    out, size = [], 0
    for line in stored:
        if size >= synced_upto:
            out.append(line)
        else:
            entry = synclog.parse(line)
            if entry is None or not entry.covered_by(user):
                out.append(line)
        size += len(line)
    return out
