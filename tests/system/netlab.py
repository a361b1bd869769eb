"""Hosts with a real network between them, inside one test container (issue 11).

Each "host" is a network namespace made inside the container (never on the machine's own
network: the container has --private-network, so nothing here can leak), with its own address,
joined to the others by a veth pair on one bridge:

    labbr          bridge in the container's own namespace, 10.77.0.254/24: the rest of the
                   world (the test's mail sender and IMAP reader sit here, and are never cut off)
    /run/netns/H   host H: lo, and eth0 = 10.77.0.N/24 with a fixed MAC, so that a host which
                   comes back is the same neighbour to the others at once
    v-H            the bridge's end of H's veth pair

A host's services are systemd units joined to its namespace by a drop-in
(NetworkNamespacePath=/run/netns/H), written by `join()`. The faults:

    partition(a, b, way) / heal(a, b)   nftables drop rules: "a>b" drops what a sends to b,
                                        "b>a" the reverse, "both" both. Silent, as a real
                                        partition is: no RST, no ICMP.
    power_off(h) / power_on(h)          every process in the host's namespace is stopped, its
                                        link cut, then SIGKILLed: nothing it had open sends a
                                        FIN. The namespace goes too (the host's kernel and its
                                        sockets died with it); power_on makes it afresh, wipes
                                        what a reboot wipes (/run) and starts the boot units.
    hang(h) / unhang(h)                 SIGSTOP / SIGCONT every process of the host; its kernel
                                        still answers (TCP handshakes, ACKs), its services don't
    fill(path) / free(path)             a filler file taking every free byte of a small
                                        filesystem (cyruslab.py spool_sizes=)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

SUBNET = "10.77.0"
BRIDGE = "labbr"
OUTSIDE = f"{SUBNET}.254"      # the bridge's own address: where the test sends mail from
DROPIN = "netlab.conf"
WAYS = ("a>b", "b>a", "both")


@dataclass
class Host:
    name: str
    octet: int
    units: list[str] = field(default_factory=list)     # joined to its namespace
    boot: list[str] = field(default_factory=list)      # started by power_on
    volatile: list[str] = field(default_factory=list)  # wiped by power_on (its /run)

    @property
    def addr(self) -> str:
        return f"{SUBNET}.{self.octet}"

    @property
    def netns(self) -> str:
        return f"/run/netns/{self.name}"


def kill_patterns(units) -> list[str]:
    """Unit names for systemctl: a template "x@.service" stands for its every instance."""
    return [u.replace("@.", "@*.") for u in units]


class NetLab:
    def __init__(self, sandbox, hosts: dict[str, int]):
        """hosts: name -> last octet of its address (1-253)."""
        self.sb = sandbox
        self.hosts = {name: Host(name, octet) for name, octet in hosts.items()}
        self.blocked: set[tuple[str, str]] = set()    # (from, to) pairs cut

    def addr(self, name: str) -> str:
        return self.hosts[name].addr

    def addrs(self) -> dict[str, str]:
        return {name: h.addr for name, h in self.hosts.items()}

    def netns(self, name: str) -> list[str]:
        """argv prefix that runs a command on host `name` (its network only)."""
        return ["nsenter", f"--net={self.hosts[name].netns}"]

    def on(self, name: str, *argv, **kw):
        return self.sb.run(*self.netns(name), *argv, **kw)

    # --- building ----------------------------------------------------------------------------

    def create(self) -> None:
        self.sb.sh(f"ip link add {BRIDGE} type bridge\n"
                   f"ip addr add {OUTSIDE}/24 dev {BRIDGE}\n"
                   f"ip link set {BRIDGE} up")
        for h in self.hosts.values():
            self._make_host(h)

    def _make_host(self, h: Host) -> None:
        n = h.name
        self.sb.sh(f"ip netns add {n}\n"
                   f"ip link add v-{n} type veth peer name eth0 netns {n}\n"
                   f"ip link set v-{n} master {BRIDGE} up\n"
                   f"ip -n {n} link set lo up\n"
                   f"ip -n {n} link set eth0 address 02:77:00:00:00:{h.octet:02x}\n"
                   f"ip -n {n} addr add {h.addr}/24 dev eth0\n"
                   f"ip -n {n} link set eth0 up")
        self._apply_rules(n)

    def join(self, name: str, units, boot=(), volatile=()) -> None:
        """Run these units (names, or templates "x@.service") on host `name`; boot: the ones
        power_on starts; volatile: paths a reboot wipes.  Reloads systemd."""
        h = self.hosts[name]
        for unit in units:
            self.sb.write_file(f"/etc/systemd/system/{unit}.d/{DROPIN}",
                               f"# netlab.py: this unit runs on lab host {name}\n"
                               f"[Service]\nNetworkNamespacePath={h.netns}\n")
        h.units += list(units)
        h.boot += list(boot)
        h.volatile += list(volatile)
        self.sb.systemctl("daemon-reload")

    # --- partitions --------------------------------------------------------------------------

    def partition(self, a: str, b: str, way: str = "both") -> None:
        if way not in WAYS:
            raise ValueError(f"way must be one of {WAYS}, not {way!r}")
        if way in ("a>b", "both"):
            self.blocked.add((a, b))
        if way in ("b>a", "both"):
            self.blocked.add((b, a))
        self._apply_rules(a)
        self._apply_rules(b)

    def heal(self, a: str, b: str) -> None:
        self.blocked -= {(a, b), (b, a)}
        self._apply_rules(a)
        self._apply_rules(b)

    def _apply_rules(self, name: str) -> None:
        """The host's whole rule set: drop what it sends to every host it is cut off from."""
        drops = "".join(f"    ip daddr {self.addr(dst)} drop\n"
                        for src, dst in sorted(self.blocked) if src == name)
        ruleset = ("table inet netlab\ndelete table inet netlab\n"
                   "table inet netlab {\n  chain out {\n"
                   "    type filter hook output priority 0; policy accept;\n"
                   f"{drops}  }}\n}}\n")
        self.on(name, "nft", "-f", "-", input=ruleset)

    # --- hosts -------------------------------------------------------------------------------

    def pids(self, name: str) -> list[int]:
        out = self.sb.run("ip", "netns", "pids", name, check=False).stdout
        return [int(p) for p in out.split()]

    def power_off(self, name: str) -> float:
        """Every process of the host at once, with no packet leaving it; returns the time
        (epoch) of the cut.  Its units are then stopped, so that systemd restarts none."""
        h = self.hosts[name]
        units = " ".join(kill_patterns(h.units))
        r = self.sb.sh(f"""
            pids() {{ ip netns pids {name}; }}
            kill -STOP $(pids) 2>/dev/null || true
            ip -n {name} link set eth0 down
            date +%s.%N
            for i in $(seq 100); do
                p=$(pids); [ -z "$p" ] && break
                kill -KILL $p 2>/dev/null || true; sleep 0.02
            done
            [ -z "$(pids)" ] || {{ echo "processes left on {name}: $(pids)" >&2; exit 1; }}
            systemctl stop {units}
            ip link del v-{name}      # at once: the namespace itself is freed asynchronously
            ip netns del {name}
        """)
        return float(r.stdout.split()[0])

    def power_on(self, name: str) -> float:
        """The host boots: a fresh namespace, its /run wiped, its boot units started; returns
        the time (epoch) its link came up."""
        h = self.hosts[name]
        if h.volatile:
            self.sb.run("rm", "-rf", *h.volatile)
        self._make_host(h)
        t = time.time()
        if h.boot:
            self.sb.systemctl("reset-failed", *kill_patterns(h.units), check=False)
            self.sb.systemctl("start", *h.boot)
        return t

    def hang(self, name: str) -> float:
        r = self.sb.sh(f"kill -STOP $(ip netns pids {name}); date +%s.%N")
        return float(r.stdout.split()[0])

    def unhang(self, name: str) -> float:
        r = self.sb.sh(f"kill -CONT $(ip netns pids {name}); date +%s.%N")
        return float(r.stdout.split()[0])

    def restart(self, name: str) -> None:
        """A clean restart of the host's boot units (processes end as systemd stops them)."""
        self.sb.systemctl("restart", *self.hosts[name].boot)


# --- a small filesystem that runs full ----------------------------------------------------------

FILLER = ".netlab-filler"


def fill(sb, path: str) -> int:
    """Take every free byte of the filesystem at path; returns the bytes taken."""
    r = sb.sh(f"cat /dev/zero > {path}/{FILLER} 2>/dev/null || true\n"
              f"stat -c %s {path}/{FILLER}")
    return int(r.stdout.split()[-1])


def free(sb, path: str) -> None:
    sb.run("rm", "-f", f"{path}/{FILLER}")
