"""Which processes belong to one Cyrus instance, found from the instance itself.

An instance is its imapd.conf. Cyrus's master does not pass its ``-C`` on to the services it
starts (cyrus-lab.md §0): each ``cmd=`` carries its own ``-C``, or the program reads
/etc/imapd.conf. So a process of the instance is, by any of:
- its command line: a Cyrus binary whose ``-C`` (or, without ``-C``, /etc/imapd.conf) is this
  imapd.conf. imapd, pop3d, httpd, nntpd and sync_server overwrite their command line with a
  status title once they serve a client (setproctitle), so for those this says nothing;
- its parent: a service started by a master of this instance;
- its session file: ``{proc_path}/<pid>`` (default ``{configdirectory}/proc``), which every
  service writes for as long as it serves a client (imap/proc.c);
- a listening socket at the instance's lmtpsocket, idlesocket or notifysocket, or under
  ``{configdirectory}/socket/``: whoever holds it, Cyrus or systemd's socket activation.
Unit names say nothing: the same master may run under any unit, or none.

Everything under /proc is read as hostile (proctable.py: bounded reads, no symlinks followed
to files, a process that vanishes meanwhile is skipped). The functions take the proc root, so
tests build a fake one. A process in another mount namespace (a container) is not ours, whatever it says.

Facts from Cyrus 3.6.1's sources: getopt strings (master/master.c, master/service.c, each
service's main), the defaults (lib/imapoptions; LIBEXEC_DIR /usr/lib/cyrus/bin on Debian).
cyrus.conf's grammar is in cyrusconf.py.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .cyrusconf import master_entries
from .imapdconf import ImapdConf
from .layout import MASTER_NAMES, SERVICE_DIRS
from .proctable import (MAX_FDS, Proc, cgroups, exe_of, names, pids, processes, read_file,
                        read_link, unit_of)

DEFAULT_IMAPD_CONF = "/etc/imapd.conf"      # what every Cyrus program reads without -C
DEFAULT_CYRUS_CONF = "/etc/cyrus.conf"      # what master reads without -M

# Programs that accept mail or change mailboxes while they run (sync_client is not one: it is
# syncwarden's own worker, or a rival found by rival_sync_clients).
MASTERS = frozenset(MASTER_NAMES)            # layout.py: which distribution calls it what
SERVICES = MASTERS | {"imapd", "pop3d", "lmtpd", "nntpd", "httpd", "timsieved", "proxyd",
                      "pop3proxyd", "lmtpproxyd", "mupdate", "sync_server", "smmapd", "fud",
                      "idled", "notifyd", "backupd", "calalarmd"}

# getopt strings: a letter followed by ':' takes a value. Services get service.c's generic
# "C:U:T:DX" in front of their own.
_SERVICE = "C:U:T:DX"
OPTSTRINGS = {
    "master": "C:L:M:p:l:Ddj:vV", "cyrus-master": "C:L:M:p:l:Ddj:vV",
    "sync_client": "C:vlLS:F:f:w:t:d:n:rRNumsozOAp:1",
    "squatter": "ABC:DFL:N:PRS:T:UXZade:f:hilmn:oprs:t:uvz:",
    "imapd": _SERVICE + "Np:sq", "pop3d": _SERVICE + "skp:", "nntpd": _SERVICE + "srfp:",
    "httpd": _SERVICE + "sp:q", "lmtpd": _SERVICE + "a", "sync_server": _SERVICE + "p:f",
    "notifyd": _SERVICE + "m:", "idled": "C:d",
}
# The sync_client workers syncwarden starts run in these units (units/).
OUR_UNITS = re.compile(r"syncwarden-(?:sync|drain|user)@[^/]+\.service")

@dataclass(frozen=True)
class CyrusProcess:
    """A process that keeps an instance serving, and how it was tied to the instance."""
    pid: int
    program: str
    why: str
    unit: str | None = None

    def describe(self) -> str:
        return f"{self.program} pid {self.pid} ({self.why}" + \
            (f"; unit {self.unit})" if self.unit else ")")


@dataclass(frozen=True)
class Rival:
    """A rolling sync_client for one of our channels (None: the default channel, no -n)
    that syncwarden did not start: a running process (pid) or a cyrus.conf entry."""
    pid: int | None
    link: str | None
    where: str              # "pid 123 (unit x.service)" or "/etc/cyrus.conf:12"
    command: str            # its arguments, as written

    @property
    def channel(self) -> str:
        return f"channel {self.link}" if self.link else "the default channel (no -n)"

    @property
    def reason(self) -> str:
        """Why a link is not trusted while this runs (for status)."""
        return f"a sync_client that syncwarden did not start runs for {self.channel}: " + \
            (self.where if self.pid is not None else f"started by {self.where}")

    def problem(self) -> str:
        """One line for check-config."""
        what = (f"a sync_client runs for {self.channel} outside syncwarden: {self.where},"
                f" `sync_client {self.command}`; stop it and whatever starts it"
                if self.pid is not None else
                f"{self.where} starts `sync_client {self.command}` for {self.channel}; remove"
                " the entry")
        return (f"links.{self.link}: " if self.link else "cyrus.imapd_conf: ") + what + \
            " (two clients on one channel race for its sync log)"


def cyrus_binary(bin_dirs):
    dirs = {os.path.normpath(d) for d in bin_dirs}
    return lambda exe: os.path.dirname(os.path.normpath(exe)) in dirs


def bin_dirs(master: str | os.PathLike) -> tuple[str, ...]:
    """Where this host's Cyrus services are: beside its master, and where distributions put
    them (layout.SERVICE_DIRS; master finds cmd= programs in its own LIBEXEC first)."""
    return tuple(dict.fromkeys([os.path.dirname(os.fspath(master)), *SERVICE_DIRS]))


# --- command lines ---------------------------------------------------------------------------

def options(program: str, argv) -> dict[str, str]:
    """getopt as glibc does it (options may follow operands): {letter: value, or ""}."""
    spec = OPTSTRINGS.get(program, "C:")
    takes = {c for i, c in enumerate(spec) if c != ":" and spec[i + 1:i + 2] == ":"}
    out: dict[str, str] = {}
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue
        for i, letter in enumerate(arg[1:], 1):
            if letter in takes:
                value = arg[i + 1:] or next(args, None)
                if value is not None:
                    out[letter] = value
                break
            out[letter] = ""
    return out


def _retitled(argv) -> bool:
    # setproctitle leaves one string such as "imapd: host [1.2.3.4] bob user.bob Select"
    return len(argv) == 1 and " " in argv[0]


def config_of(root: Path, proc: Proc) -> str | None:
    """The imapd.conf a process reads; None when its command line no longer says."""
    if not proc.argv or _retitled(proc.argv):
        return None
    conf = options(proc.program, proc.argv).get("C") or DEFAULT_IMAPD_CONF
    if not os.path.isabs(conf):
        cwd = read_link(root / str(proc.pid) / "cwd")
        if not cwd:
            return None
        conf = os.path.join(cwd, conf)
    return os.path.normpath(conf)


def same_file(a, b) -> bool:
    if os.path.normpath(a) == os.path.normpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _why_conf(proc: Proc, conf: str) -> str:
    return f"-C {conf}" if "C" in options(proc.program, proc.argv) else \
        f"no -C, so {DEFAULT_IMAPD_CONF}"


# --- the instance's services -----------------------------------------------------------------

def service_processes(imapd: ImapdConf, dirs, proc_root="/proc") -> list[CyrusProcess]:
    """Every process that keeps this instance accepting mail or changes (see the module
    docstring for how each is found), ordered by pid; [] when Cyrus is stopped."""
    root = Path(proc_root)
    procs = processes(root, cyrus_binary(dirs))
    found: dict[int, CyrusProcess] = {}

    def add(pid: int, program: str, why: str) -> None:
        if pid not in found:
            found[pid] = CyrusProcess(pid, program, why, unit_of(root, pid))

    masters = []
    for p in procs.values():
        conf = config_of(root, p)
        if p.program in SERVICES and conf and same_file(conf, imapd.path):
            add(p.pid, p.program, _why_conf(p, conf))
            if p.program in MASTERS:
                masters.append(p.pid)
    children: dict[int, list[Proc]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p)
    for master in masters:
        todo, seen = [master], {master}
        while todo:
            for child in children.get(todo.pop(), []):
                if child.pid not in seen and child.program in SERVICES:
                    seen.add(child.pid)
                    todo.append(child.pid)
                    add(child.pid, child.program, f"started by master pid {master}")
    folder = proc_dir(imapd)
    for name in names(folder) if folder else []:
        p = procs.get(int(name)) if name.isascii() and name.isdigit() else None
        if p and p.program in SERVICES:
            add(p.pid, p.program, f"serves a client: {folder}/{name}")
    for path, pid in listeners(root, imapd):
        add(pid, os.path.basename(exe_of(root, pid) or "?"), f"listens on {path}")
    return [found[pid] for pid in sorted(found)]


def _expand(imapd: ImapdConf, value: str | None) -> str | None:
    if value and value.startswith("{configdirectory}"):
        if imapd.configdirectory is None:
            return None
        value = str(imapd.configdirectory) + value[len("{configdirectory}"):]
    return value


def proc_dir(imapd: ImapdConf) -> Path | None:
    """Where the instance's services keep their session files (``proc_path``)."""
    value = _expand(imapd, imapd.options.get("proc_path") or "{configdirectory}/proc")
    return Path(value) if value else None


def socket_paths(imapd: ImapdConf) -> tuple[set[str], str | None]:
    """(the instance's own socket paths, the folder any socket of it lives in)."""
    paths = set()
    for key in ("lmtpsocket", "idlesocket", "notifysocket"):
        value = _expand(imapd, imapd.options.get(key) or "{configdirectory}/socket/" + key[:-6])
        if value:
            paths.add(os.path.normpath(value))
    conf_dir = imapd.configdirectory
    return paths, (os.path.join(os.path.normpath(conf_dir), "socket") + "/" if conf_dir else None)


def listeners(root: Path, imapd: ImapdConf) -> list[tuple[str, int]]:
    """(socket path, pid) of every process holding a listening Unix socket of the instance."""
    paths, folder = socket_paths(imapd)
    inodes = {}
    raw = read_file(root / "net" / "unix", 64 << 20) or b""
    for line in raw.decode("utf-8", "surrogateescape").splitlines()[1:]:
        fields = line.split(None, 7)    # Num RefCount Protocol Flags Type St Inode Path
        if len(fields) < 8 or not fields[6].isdigit():
            continue
        try:
            listening = int(fields[3], 16) & 0x10000        # __SO_ACCEPTCON
        except ValueError:
            continue
        path = os.path.normpath(fields[7])
        if listening and (path in paths or (folder and path.startswith(folder))):
            inodes[f"socket:[{fields[6]}]"] = path
    out = []
    for pid in pids(root) if inodes else []:
        fds = root / str(pid) / "fd"
        for name in names(fds)[:MAX_FDS]:
            path = inodes.get(read_link(fds / name) or "")
            if path:
                out.append((path, pid))
                break
    return out


# --- every process of an instance, also without /proc/PID/exe ---------------------------------

def program_of(proc: Proc) -> str:
    """The Cyrus program of a process, also when /proc/PID/exe could not be read (the daemon
    has no CAP_SYS_PTRACE) and setproctitle left one string: "imapd: host [1.2.3.4] bob ..."."""
    if proc.argv and _retitled(proc.argv) and proc.exe == proc.argv[0]:
        return os.path.basename(proc.argv[0].split(":", 1)[0])
    return proc.program


def instance_processes(imapd: ImapdConf, proc_root="/proc") -> list[tuple[Proc, str]]:
    """(process, how it was tied to the instance) for every process of the instance, by pid:
    its command line names the imapd.conf, it descends from a master of the instance, or it
    has a session file in proc_path. Unlike service_processes this needs no readable
    /proc/PID/exe (the children of master are found by their parent, whatever they are)."""
    root = Path(proc_root)
    everyone = processes(root, lambda exe: True)
    found: dict[int, str] = {}
    masters = []
    for p in everyone.values():
        conf = config_of(root, p)
        if conf and same_file(conf, imapd.path):
            if program_of(p) in MASTERS:
                masters.append(p.pid)
            found.setdefault(p.pid, _why_conf(p, conf))
    children: dict[int, list[int]] = {}
    for p in everyone.values():
        children.setdefault(p.ppid, []).append(p.pid)
    for master in masters:
        todo, seen = list(children.get(master, [])), {master}
        while todo:
            pid = todo.pop()
            if pid not in seen:
                seen.add(pid)
                found.setdefault(pid, f"started by master pid {master}")
                todo += children.get(pid, [])
    folder = proc_dir(imapd)
    for name in names(folder) if folder else []:
        if name.isascii() and name.isdigit() and int(name) in everyone:
            found.setdefault(int(name), f"serves a client: {folder}/{name}")
    return [(everyone[pid], why) for pid, why in sorted(found.items())]


# --- sync_clients syncwarden did not start ---------------------------------------------------

def rival_sync_clients(imapd_conf_path, links, proc_root="/proc") -> list[Rival]:
    """Rolling sync_clients (-r or -R) of this imapd.conf for one of ``links`` (names) or for
    the default channel, running outside syncwarden's worker units."""
    root = Path(proc_root)
    out = []
    procs = processes(root, lambda exe: os.path.basename(exe) == "sync_client")
    for p in sorted(procs.values(), key=lambda p: p.pid):
        opts = options("sync_client", p.argv)
        conf = config_of(root, p)
        link = opts.get("n")
        if not ("r" in opts or "R" in opts) or not conf or not same_file(conf, imapd_conf_path) \
                or (link is not None and link not in links):
            continue
        if any(OUR_UNITS.fullmatch(part) for path in cgroups(root, p.pid)
               for part in path.split("/")):
            continue
        unit = unit_of(root, p.pid)
        out.append(Rival(p.pid, link, f"pid {p.pid}" + (f" (unit {unit})" if unit else ""),
                         " ".join(p.argv[1:])))
    return out


def cyrus_conf_sync_clients(path, imapd_conf_path, links) -> list[Rival]:
    """Entries of the cyrus.conf at ``path`` that start a rolling sync_client of this
    imapd.conf for one of ``links`` or the default channel. [] if the file cannot be read."""
    try:
        with open(path, "rb") as f:          # a config file, so a symlink is fine here
            raw = f.read(1 << 20)
    except OSError:
        return []
    out = []
    for e in master_entries(raw.decode("utf-8", "surrogateescape")):
        argv = e.args.get("cmd", "").split()
        if argv and os.path.basename(argv[0]) == "cyrus":   # Debian's /usr/sbin/cyrus PROGRAM
            argv = argv[1:]
        if not argv or os.path.basename(argv[0]) != "sync_client":
            continue
        opts = options("sync_client", argv)
        conf = os.path.join("/", opts.get("C") or DEFAULT_IMAPD_CONF)
        link = opts.get("n")
        if ("r" in opts or "R" in opts) and same_file(conf, imapd_conf_path) \
                and (link is None or link in links):
            out.append(Rival(None, link, f"{path}:{e.line} ({e.section} entry {e.name!r})",
                             " ".join(argv[1:])))
    return out


def cyrus_conf_channel_readers(path, imapd_conf_path) -> set[str | None]:
    """The sync log channels that entries of the cyrus.conf at ``path`` read for this
    imapd.conf: a rolling sync_client (-r/-R, channel -n or the default) or a rolling squatter
    (-R, channel -n or "squatter", imap/squatter.c). set() if the file cannot be read."""
    try:
        with open(path, "rb") as f:          # a config file, so a symlink is fine here
            raw = f.read(1 << 20)
    except OSError:
        return set()
    out: set[str | None] = set()
    for e in master_entries(raw.decode("utf-8", "surrogateescape")):
        argv = e.args.get("cmd", "").split()
        if argv and os.path.basename(argv[0]) == "cyrus":   # Debian's /usr/sbin/cyrus PROGRAM
            argv = argv[1:]
        program = os.path.basename(argv[0]) if argv else ""
        if program not in ("sync_client", "squatter"):
            continue
        opts = options(program, argv)
        conf = os.path.join("/", opts.get("C") or DEFAULT_IMAPD_CONF)
        rolling = "R" in opts or (program == "sync_client" and "r" in opts)
        if rolling and same_file(conf, imapd_conf_path):
            out.add(opts.get("n") or ("squatter" if program == "squatter" else None))
    return out


def cyrus_conf_paths(imapd_conf_path, dirs, proc_root="/proc",
                     default=DEFAULT_CYRUS_CONF) -> list[str]:
    """The cyrus.conf files of this instance: each running master's -M, and the default one
    (its entries name their own -C, so reading it for another instance finds nothing)."""
    root = Path(proc_root)
    out = [default]
    for p in processes(root, cyrus_binary(dirs)).values():
        conf = config_of(root, p)
        if p.program in MASTERS and conf and same_file(conf, imapd_conf_path):
            m = options(p.program, p.argv).get("M") or default
            cwd = read_link(root / str(p.pid) / "cwd") or "/"
            out.append(os.path.normpath(os.path.join(cwd, m)))
    return list(dict.fromkeys(out))

