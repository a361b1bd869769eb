"""A real systemd for system tests: a systemd-nspawn container over an overlay of a Debian root.

The host does not boot with systemd, and syncwarden is systemd-native, so each test boots its own
container (0.3-0.4 s on the dev VM; stop takes about 0.2 s).  The overlay's lower layer is the
host's own root or a cached root of another Debian release (roots.py): systemd 252 on Debian 12,
257 on Debian 13.  Users and groups (cyrus is uid 103 on one, 101 on the other) are always looked
up in the container's root, never on the host.  Layout, all under /run/syncwarden-test/<name>/:

    owner        "<pid> <starttime>" of the process that made it (tells a crashed run from a live one)
    ovl/         tmpfs holding the overlay's upper and work dirs: every write of the container lands here
    root/        overlay(lowerdir=/ or the release's root, upper=ovl/up): the container's root,
                 and host_path()'s base
    console.log  the container's console (systemd's boot messages)

Safety: systemd is only ever booted on that overlay, with --private-network (only a loopback
inside), so nothing it does at boot (tmpfiles wiping /tmp, sysctls, ...) reaches the host.  We
only kill processes we started, by pid, and only unmount mounts under /run/syncwarden-test/.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from . import roots

BASE = Path("/run/syncwarden-test")

# Daemons enabled on the host that must not start inside.  Debian's cyrus-imapd.service is NOT
# masked: CyrusLab replaces it with a unit of the same name (the product orders itself
# Before=cyrus-imapd.service); it is only kept from starting at boot (see NO_AUTOSTART).
MASKED = (
    "exim4.service", "saslauthd.service", "rsync.service", "cron.service",
    "postgresql.service", "postgresql@.service",
    # the tests that need a Prometheus run their own (tests/system/promlab.py)
    "prometheus.service", "prometheus-node-exporter.service",
    # likewise etcd (tests/system/etcdlab.py)
    "etcd.service",
    # timers only add noise to the journal (apt-daily would even try the network)
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "exim4-base.timer", "fstrim.timer", "man-db.timer",
)
NO_AUTOSTART = ("cyrus-imapd.service",)
AUTOSTART_DIRS = ("multi-user.target.wants", "default.target.wants", "graphical.target.wants",
                  "sockets.target.wants", "timers.target.wants", "remote-fs.target.wants")

# A clean environment for commands inside: the caller's (pyenv PATH, pytest variables) is not
# the container's business.
INNER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LANG": "C.UTF-8", "HOME": "/root", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}

_LIVE: set[Path] = set()      # folders of Sandboxes this process is using right now


class SandboxError(RuntimeError):
    pass


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the output (what a failing test needs to show)."""

    def __str__(self):
        out = "\n".join(x.strip()[-2000:] for x in (self.stdout or "", self.stderr or "") if x.strip())
        return f"{super().__str__()}\n{out}"


# --- small /proc and mount helpers --------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the comm (field 3 = state is [0]); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")   # a zombie has exited already


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _starttime(pid: int) -> str | None:
    st = _stat(pid)
    return st[19] if st else None                        # field 22 of stat


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _nspawn_pids() -> dict[Path, int]:
    """{sandbox folder: pid} of every systemd-nspawn whose -D root lies under BASE."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) != "systemd-nspawn" or "-D" not in argv[:-1]:
            continue
        root = Path(argv[argv.index("-D") + 1])
        if root.parent.parent == BASE and _alive(int(d)):
            found[root.parent] = int(d)
    return found


def _mounts_under(folder: Path) -> list[str]:
    """Mount points below folder, deepest first (the order to unmount them in)."""
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(str(folder) + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _umount_all(folder: Path) -> None:
    for point in _mounts_under(folder):
        for _ in range(20):
            if subprocess.run(["umount", point], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)             # "busy" right after the container exits, briefly
        else:
            subprocess.run(["umount", "-l", point], check=True)


def _terminate(name: str, nspawn_pid: int | None, popen=None, grace: float = 10) -> None:
    """SIGTERM nspawn, which shuts the container down cleanly; after grace seconds SIGKILL what
    is left in the sandbox's cgroups.  Killing nspawn alone is not enough: the container's init
    then lives on (reparented to the host's PID 1), and stray containers soon exhaust root's
    128 inotify instances, after which no new container boots.  Killing the container's init
    ends its whole pid namespace."""
    if nspawn_pid is not None and _alive(nspawn_pid):
        os.kill(nspawn_pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(nspawn_pid) and time.monotonic() < deadline:
            if popen is not None and popen.poll() is not None:
                break
            time.sleep(0.05)
    for _ in range(100):
        pids = [p for p in _cgroup_pids(name) + [nspawn_pid or 0] if p and _alive(p)]
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    if popen is not None:
        popen.wait(10)


def _owner_alive(folder: Path) -> bool:
    try:
        pid, start = (folder / "owner").read_text().split()
    except (OSError, ValueError):
        # No owner file: either left half-made by a killed run, or being made right now.
        return time.time() - folder.stat().st_mtime < 10 if folder.exists() else False
    if int(pid) == os.getpid():
        return folder in _LIVE
    return _starttime(int(pid)) == start


def _remove(folder: Path, nspawn_pid: int | None = None, popen=None) -> None:
    _terminate(folder.name, nspawn_pid, popen)
    _umount_all(folder)
    _remove_cgroups(folder.name)
    if _mounts_under(folder):   # never rmtree across a mount (that would delete its contents)
        raise SandboxError(f"{folder}: still mounted: {_mounts_under(folder)}")
    shutil.rmtree(folder, ignore_errors=True)


def cleanup_stale() -> None:
    """Remove what earlier, killed runs left under BASE: their nspawn (by pid), mounts and folders.

    Folders of live processes (another pytest running now, or this one) are left alone."""
    if not BASE.is_dir():
        return
    nspawns = _nspawn_pids()
    folders = set(BASE.iterdir()) | set(nspawns)
    for line in Path("/proc/mounts").read_text().splitlines():
        point = Path(line.split()[1])
        if point.parent.parent == BASE:
            folders.add(point.parent)
    for folder in sorted(folders):
        if folder.is_dir() and not _owner_alive(folder):
            _remove(folder, nspawns.get(folder))
    for root in _cgroup_roots():          # cgroups whose sandbox folder is gone
        for cg in root.iterdir() if root.is_dir() else ():
            if cg.is_dir() and not (BASE / cg.name).exists():
                _terminate(cg.name, None)     # an orphaned container, if any
                _remove_cgroups(cg.name)


def _cgroup_roots() -> list[Path]:
    """Where sandboxes get their own cgroup, in each hierarchy nspawn uses (name=systemd v1, cgroup2).

    With --keep-unit, nspawn puts itself in <its cgroup>/supervisor and the container in
    <its cgroup>/payload.  Started from the host's root cgroup, every nspawn on the machine would
    use the same /payload, and the containers' systemds would share one cgroup tree: same-named
    units of two containers in one cgroup, whose cgroup.procs then lists the other's processes as
    pid 0 (systemd 252 fails with EIO on that).  So each nspawn starts in a cgroup of its own."""
    dirs = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, opts = line.split()[:4]
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in opts.split(",")):
            dirs[point] = Path(point) / BASE.name
    return list(dirs.values())


def _cgroup_dirs(name: str) -> list[Path]:
    return [root / name for root in _cgroup_roots()]


def _cgroup_pids(name: str) -> list[int]:
    """Every process in the sandbox's cgroups: nspawn and the whole container."""
    pids = set()
    for top in _cgroup_dirs(name):
        for d, _, files in os.walk(top):
            if "cgroup.procs" in files:
                try:
                    pids.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
                except OSError:
                    pass
    return sorted(pids)


def _remove_cgroups(name: str) -> None:
    for top in _cgroup_dirs(name):
        if top.is_dir():
            for d, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
                try:
                    os.rmdir(d)          # only empty cgroups can go; a leftover is retried later
                except OSError:
                    pass


def _nspawn_preexec(cgroups: list[Path]):
    # Runs in the forked child before exec.
    def preexec():
        for cg in cgroups:
            (cg / "cgroup.procs").write_text("0")   # "0": the writing process itself
        # If the test process is killed, nspawn gets SIGTERM and shuts the container down
        # (the mounts are then left for cleanup_stale()).
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    return preexec


class Sandbox:
    """A booted systemd container.  Use as a context manager, or start() / stop()."""

    def __init__(self, name: str, masked=MASKED, no_autostart=NO_AUTOSTART, tmpfs_size="4g",
                 release: str | None = None):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,40}", name):
            raise ValueError(f"bad sandbox name {name!r} (it is also the container's host name)")
        self.name, self.masked, self.no_autostart = name, masked, no_autostart
        # which Debian runs inside: the caller's choice, else SYNCWARDEN_TEST_ROOT, else bookworm
        self.release = roots.check_release(release or roots.selected() or roots.DEFAULT)
        self.lower = roots.lower_dir(self.release)
        self.tmpfs_size = tmpfs_size
        self.folder = BASE / name
        self.root = self.folder / "root"
        self.console_log = self.folder / "console.log"
        self.popen: subprocess.Popen | None = None
        self.pid1: int | None = None          # the container's systemd, as seen from the host
        self.boot_state: str | None = None    # "running" or "degraded"
        self.boot_seconds: float | None = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        t0 = time.monotonic()
        if self.folder.exists():
            if _owner_alive(self.folder):
                raise SandboxError(f"{self.folder} is in use")
            _remove(self.folder, _nspawn_pids().get(self.folder))
        self.folder.mkdir(parents=True)
        _LIVE.add(self.folder)
        (self.folder / "owner").write_text(f"{os.getpid()} {_starttime(os.getpid())}\n")
        try:
            self._mount()
            self._prepare_root()
            self._boot(timeout)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - t0

    def _mount(self) -> None:
        ovl = self.folder / "ovl"
        ovl.mkdir()
        self.root.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.tmpfs_size},mode=0755",
                        "tmpfs", str(ovl)], check=True)
        (ovl / "up").mkdir()
        (ovl / "wk").mkdir()
        if not (self.lower / "usr/lib/systemd/systemd").exists():
            raise SandboxError(f"{self.lower}: no systemd there: {roots.missing(self.release)}")
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.lower},upperdir={ovl}/up,workdir={ovl}/wk",
                        str(self.root)], check=True)

    def _prepare_root(self) -> None:
        etc = self.root / "etc/systemd/system"
        etc.mkdir(parents=True, exist_ok=True)
        for unit in self.masked:
            link = etc / unit
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to("/dev/null")
        for unit in self.no_autostart:            # drop "enabled" links, keep the unit itself
            for link in etc.glob(f"*.wants/{unit}"):
                link.unlink()
        # Whatever else the host's admin enabled (smartd, nvme autoconnect, a prometheus
        # installed for a test...) does not start at boot either: the container runs systemd's
        # own units and what a test starts. The units stay available to start by hand.
        for wants in AUTOSTART_DIRS:
            for link in (etc / wants).glob("*"):
                if link.is_symlink() and not link.name.endswith(".target"):
                    link.unlink()
        for link in self.root.glob("etc/rc[2-5].d/S*"):     # init scripts (openipmi, ...)
            if link.is_symlink():
                link.unlink()
        # Tests read the journal: journald must not drop lines when Cyrus logs thousands a second.
        conf = self.root / "etc/systemd/journald.conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "syncwarden-test.conf").write_text("[Journal]\nRateLimitIntervalSec=0\n")
        # Our own machine id: otherwise nspawn refuses ("Host and machine ids are equal").
        (self.root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")

    def _boot(self, timeout: float) -> None:
        cgroups = _cgroup_dirs(self.name)
        for cg in cgroups:
            cg.mkdir(parents=True, exist_ok=True)
        argv = ["systemd-nspawn", "-D", str(self.root), "--private-network", "--register=no",
                "--keep-unit", "--link-journal=no", f"--machine={self.name}",
                "--console=passive", "-b"]
        with open(self.console_log, "wb") as log:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_nspawn_preexec(cgroups))
        deadline = time.monotonic() + timeout
        while self.pid1 is None:       # nspawn forks; its child execs the container's systemd
            self._check_nspawn()
            self.pid1 = next((p for p in _children(self.popen.pid) if _comm(p) == "systemd"), None)
            if time.monotonic() > deadline:
                raise SandboxError(f"no systemd under nspawn after {timeout}s\n{self.console_tail()}")
            time.sleep(0.02)
        while True:
            # Fails ("offline" / no bus) until systemd has set up its private socket; then
            # --wait blocks until the boot has finished.
            left = deadline - time.monotonic()
            try:
                r = self.run("systemctl", "is-system-running", "--wait", check=False,
                             timeout=max(left, 1))
            except subprocess.TimeoutExpired:
                r = None
            state = r.stdout.strip() if r else "timeout"
            if state in ("running", "degraded"):
                self.boot_state = state
                return
            self._check_nspawn()
            if time.monotonic() > deadline:
                raise SandboxError(f"boot did not finish in {timeout}s (state {state!r})\n"
                                   f"{self.console_tail()}")
            time.sleep(0.05)

    def _check_nspawn(self) -> None:
        if self.popen.poll() is not None:
            raise SandboxError(f"systemd-nspawn exited with {self.popen.returncode}\n"
                               f"{self.console_tail()}")

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "console log tail:\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM nspawn (clean container shutdown), then unmount and remove the folder."""
        if self.folder not in _LIVE:       # never started by us: not ours to remove
            return
        try:
            if self.folder.exists():
                pid = self.popen.pid if self.popen else _nspawn_pids().get(self.folder)
                _remove(self.folder, pid, self.popen)
        finally:
            _LIVE.discard(self.folder)
            self.pid1 = None

    def poweroff(self, timeout: float = 60, keep_files: bool = False) -> int:
        """`systemctl poweroff` inside (a real shutdown: units stop in order); returns nspawn's rc.

        keep_files: leave the overlay mounted, so host_path() still reads what the container
        left on disk; stop() (the fixture calls it) unmounts it afterwards."""
        self.run("systemctl", "poweroff", check=False)
        try:
            rc = self.popen.wait(timeout)
        finally:
            if not keep_files or self.running:
                self.stop()  # SIGKILL-free if it has exited already; unmounts either way
        return rc

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    # --- working inside ----------------------------------------------------------------------

    def run(self, *argv, check=True, timeout=120, input=None, env=None, user=None):
        """Run argv inside the container (all its namespaces) as root, or as user (setpriv).

        Returns a text-mode CompletedProcess; raises CommandError if check and rc != 0."""
        if self.pid1 is None:
            raise SandboxError(f"sandbox {self.name} is not running")
        argv = [str(a) for a in argv]
        if user is not None:
            uid, gid = self.user_ids(user)
            argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--"] + argv
        cmd = ["nsenter", "-t", str(self.pid1), "-a", "--"] + argv
        # Own process group, so a timeout also kills the child nsenter forked into the container.
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**INNER_ENV, **(env or {})}, start_new_session=True)
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise
        r = subprocess.CompletedProcess(argv, p.returncode, out, err)
        if check and r.returncode != 0:
            raise CommandError(r.returncode, argv, out, err)
        return r

    def sh(self, script: str, **kw):
        """bash -c script inside (with -e and pipefail); same keywords as run()."""
        return self.run("bash", "-e", "-o", "pipefail", "-c", script, **kw)

    def systemctl(self, *args, check=True, timeout=120):
        return self.run("systemctl", *args, check=check, timeout=timeout)

    def host_path(self, p: str | os.PathLike) -> Path:
        """Where the container's file p is on the host (the overlay; writes are visible inside)."""
        return self.root / str(p).lstrip("/")

    def write_file(self, p, text: str, mode=0o644, owner: str | tuple | None = None) -> Path:
        """Write the container file p (parents made as needed); owner "user:group" or (uid, gid)."""
        hp = self.host_path(p)
        hp.parent.mkdir(parents=True, exist_ok=True)
        hp.write_text(text)
        hp.chmod(mode)
        if owner is not None:
            user, group = owner.split(":") if isinstance(owner, str) else owner
            uid = self.user_ids(user)[0] if isinstance(user, str) else user
            gid = self.group_id(group) if isinstance(group, str) else group
            os.chown(hp, uid, gid)
        return hp

    # --- users and groups: the container root's own, not the host's -------------------------

    def _entry(self, table: str, name: str) -> list[str]:
        for line in self.host_path(f"/etc/{table}").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name and len(fields) >= 4:
                return fields
        raise KeyError(f"{name!r} not in the container's /etc/{table} ({self.release})")

    def user_ids(self, user: str) -> tuple[int, int]:
        """(uid, primary gid) of a user inside the container."""
        fields = self._entry("passwd", user)
        return int(fields[2]), int(fields[3])

    def group_id(self, group: str) -> int:
        return int(self._entry("group", group)[2])

    def read_file(self, p) -> str:
        return self.host_path(p).read_text()

    # --- journal -----------------------------------------------------------------------------

    def journal(self, unit=None, since_cursor=None, identifier=None, fields=False, lines=None):
        """Journal entries: "ident[pid]: message" strings, or the raw field dicts if fields=True."""
        argv = ["journalctl", "--no-pager", "-o", "json"]
        if unit:
            argv += ["-u", unit]
        if identifier:
            argv += ["-t", identifier]
        if since_cursor:
            argv += ["--after-cursor", since_cursor]
        if lines:
            argv += ["-n", str(lines)]
        entries = [json.loads(x) for x in self.run(*argv).stdout.splitlines() if x.strip()]
        if fields:
            return entries
        return [f"{e.get('SYSLOG_IDENTIFIER', '?')}[{e.get('_PID', '?')}]: {_message(e)}"
                for e in entries]

    def journal_cursor(self) -> str | None:
        """Cursor of the newest entry: pass it as since_cursor to see only what comes later."""
        out = self.run("journalctl", "--no-pager", "-o", "json", "-n", "1").stdout.strip()
        return json.loads(out)["__CURSOR"] if out else None

    def wait_journal(self, pattern: str, timeout: float = 30, **filters) -> str | None:
        """First journal line (as from journal()) matching regex pattern, polling; None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.journal(**filters):
                if re.search(pattern, line):
                    return line
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)


def _message(entry: dict) -> str:
    m = entry.get("MESSAGE", "")
    if isinstance(m, list):        # journald's JSON for a message that is not valid UTF-8
        m = bytes(m).decode(errors="replace")
    return m
