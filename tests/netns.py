"""Hosts on one machine, for the multi-host test: network namespaces joined to a bridge by veth pairs (iproute2).

A `Network` is a switch (a namespace holding the bridge) and hosts, each a
namespace of its own with one interface on the bridge's private subnet and its
own loopback; the test process joins as one more host over a veth pair of its
own, so that it can send traffic and read the store. Nothing is routed beyond
the subnet. `cut(host)` takes the host's link on the switch down (its processes
live on, unreachable), as a failed switch port or a lost host does.

Making namespaces needs root (CAP_SYS_ADMIN) and `ip`; `unavailable()` says why
they cannot be made here.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces are Linux's"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed (Debian: apt-get install iproute2)"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"capprobe{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"network namespaces cannot be made here ({exc})"
    ip("netns", "del", probe)
    return None


class Network:
    """A bridge on a private /24 and the hosts on it; `close()` removes every namespace and link it made."""

    def __init__(self):
        self.tag = f"{random.randrange(16**4):04x}"
        self.prefix = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
        self.switch = f"cap{self.tag}sw"
        self.hosts: dict[str, int] = {}
        self.namespaces: list[str] = []
        ip("netns", "add", self.switch)
        self.namespaces.append(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        # The test process's own port on the switch: host 1.
        self.local = f"cap{self.tag}"
        ip("link", "add", self.local, "type", "veth", "peer", "name", "p1", "netns", self.switch)
        ip("addr", "add", f"{self.address(1)}/24", "dev", self.local)
        ip("link", "set", self.local, "up")
        ip("-n", self.switch, "link", "set", "p1", "master", "br0", "up")

    def address(self, index: int) -> str:
        return f"{self.prefix}.{index}"

    def namespace(self, name: str) -> str:
        return f"cap{self.tag}{name}"

    def add(self, name: str) -> str:
        """A new host called `name`; returns its address."""
        index = len(self.hosts) + 2
        self.hosts[name] = index
        ns = self.namespace(name)
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{index}", "netns", self.switch)
        ip("-n", ns, "addr", "add", f"{self.address(index)}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", self.switch, "link", "set", f"p{index}", "master", "br0", "up")
        return self.address(index)

    def on(self, name: str, argv: list[str]) -> list[str]:
        """`argv` run on host `name`."""
        return ["ip", "netns", "exec", self.namespace(name), *argv]

    def cut(self, name: str) -> None:
        """Host `name` off the network: its port on the switch down."""
        ip("-n", self.switch, "link", "set", f"p{self.hosts[name]}", "down")

    def close(self) -> None:
        for ns in reversed(self.namespaces):  # a namespace's veth ends go with it, and so do their peers
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.local], capture_output=True, timeout=30)
