"""The exit watch against real processes: a pidfd in a real selector."""

import selectors
import subprocess

from supervisor.systemd.exitwatch import ExitWatch


def test_the_selector_wakes_when_the_process_exits():
    sel = selectors.DefaultSelector()
    watch = ExitWatch(sel)
    proc = subprocess.Popen(["sleep", "0.2"])
    try:
        assert watch.watch(proc.pid) and watch.watch(proc.pid)     # twice: one pidfd
        assert sel.select(0) == [] and watch.watching(proc.pid)    # still running
        (key, _), = sel.select(10)
        key.data()                                                 # the loop's callback
        assert proc.wait(1) == 0 and sel.get_map() == {}
        assert not watch.watching(proc.pid)
    finally:
        proc.kill()
        watch.close()
        sel.close()


def test_a_process_that_is_gone_cannot_be_watched():
    sel = selectors.DefaultSelector()
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert ExitWatch(sel).watch(proc.pid) is False
    assert sel.get_map() == {}
