"""Where a Debian release's packaging tools run for test_packages.py: on this host for the
host's own release, else in a container of that release (roots.py), with the checkout copied in.

Either way a test asks the same things: run(argv) with that release's dpkg-buildpackage,
lintian, rpmbuild, rpm and rpmlint, and host_path(p) for a file the tools wrote, to read it
from the test. Paths given to run() are the tools' own (the container's, for a container).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from . import roots
from .sandbox import Sandbox

REPO = Path(__file__).resolve().parents[2]
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SRC = "/srv/syncwarden-src"          # the checkout, inside a tools container
# What packaging/build copies into a package's sources (copy_sources), and itself.
CHECKOUT = ("supervisor", "units", "config", "docs", "packaging", "tests/unit",
            "pyproject.toml", "README.md")


def host_run(argv, check=True, env=None, **kw) -> subprocess.CompletedProcess:
    """A host command with Debian's tools (not a pyenv or virtualenv python on PATH)."""
    e = {"PATH": HOST_PATH, "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root"),
         **(env or {})}
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=e, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{argv} exited {r.returncode}\n"
                             f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


class Tools:
    """This host's own tools (the host runs the release)."""

    def __init__(self, release: str, scratch: Path):
        self.release, self.scratch, self.repo = release, scratch, REPO

    def run(self, argv, check=True, env=None, timeout=600) -> subprocess.CompletedProcess:
        return host_run(argv, check=check, env=env, timeout=timeout)

    def host_path(self, p) -> Path:
        return Path(p)

    def stop(self) -> None:
        pass


class ContainerTools(Tools):
    """A booted container of the release, holding a copy of the checkout at SRC."""

    def __init__(self, release: str, name: str):
        self.sb = Sandbox(name, release=release)
        self.sb.start()
        try:
            src = self.sb.host_path(SRC)
            for part in CHECKOUT:
                if (REPO / part).is_dir():
                    shutil.copytree(REPO / part, src / part, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    (src / part).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / part, src / part)
        except BaseException:
            self.sb.stop()
            raise
        super().__init__(release, Path("/root/pkgtest"))
        self.repo = Path(SRC)

    def run(self, argv, check=True, env=None, timeout=600) -> subprocess.CompletedProcess:
        r = self.sb.run(*argv, check=False, env=env, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{argv} exited {r.returncode} in {self.release}\n"
                                 f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def host_path(self, p) -> Path:
        return self.sb.host_path(p)

    def stop(self) -> None:
        self.sb.stop()


def tools_for(release: str, scratch: Path) -> Tools:
    if roots.lower_dir(release) == Path("/"):
        return Tools(release, scratch)
    return ContainerTools(release, f"pkg-{release}-{os.getpid()}")
