"""Several "hosts" on one machine: Linux network namespaces joined by veth pairs to a bridge.

Why namespaces: the hosts of a multi-host deployment share no loopback, so a server that only
worked because Redis or the store answered on 127.0.0.1, or because two processes saw one
``MODEL_DIR``, fails here as it would on real hosts. Every address lives inside the namespaces
(the bridge sits in the hub namespace, not on the machine); everything is removed on exit, and
every process started in a namespace is killed first. Needs root (``ip netns``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "isnet-mh-"


def available() -> str | None:
    """None when namespaces can be made here, else why not (for a skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    name = f"{PREFIX}probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Host:
    name: str
    namespace: str
    address: str


@dataclass
class Network:
    """Namespaces named ``isnet-mh-<tag>-<host>`` on one /24; ``hub`` holds the bridge."""

    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)
    tag: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(2)}")
    subnet: str = field(default_factory=lambda: f"10.{random.randint(100, 250)}.{random.randint(0, 255)}")

    def add(self, name: str) -> Host:
        namespace = f"{PREFIX}{self.tag}-{name}"
        _ip("netns", "add", namespace)
        index = len(self.hosts) + 1
        host = Host(name, namespace, f"{self.subnet}.{index}")
        self.hosts[name] = host
        _ip("-n", namespace, "link", "set", "lo", "up")
        if index == 1:  # the hub: the bridge, with the hub's own address on it
            _ip("-n", namespace, "link", "add", "br0", "type", "bridge")
            _ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", "br0")
            _ip("-n", namespace, "link", "set", "br0", "up")
            return host
        hub = next(iter(self.hosts.values()))
        port = f"p{index}"
        _ip("-n", hub.namespace, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("-n", hub.namespace, "link", "set", port, "master", "br0", "up")
        _ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        return host

    def _in(self, host: str, cmd: list[str]) -> list[str]:
        """``cmd`` run in ``host``'s network namespace with a host name of its own (``socket.gethostname()``
        differs between hosts, as what a lock holder or RQ records says)."""
        return ["ip", "netns", "exec", self.hosts[host].namespace, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', host, *cmd]

    def start(self, host: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        """``cmd`` in ``host``'s namespace (its own session, so all its children can be killed)."""
        with open(log, "ab") as out:
            process = subprocess.Popen(self._in(host, cmd), env=env,
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def run(self, host: str, cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        """``cmd`` in ``host``'s namespace, to its end (killed, with its children, past ``timeout``)."""
        process = subprocess.Popen(self._in(host, cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        self.processes.append(process)
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(process)
            out, _ = process.communicate()
            raise AssertionError(f"{' '.join(cmd)} on {host} ran past {timeout:.0f} s:\n{out[-4000:]}") from None
        return subprocess.CompletedProcess(cmd, process.returncode, out)

    def http(self, host: str, method: str, url: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        """One HTTP request made from ``host`` (standard library only: a fresh process starts fast)."""
        script = (
            "import json,sys,urllib.request,urllib.error\n"
            "method,url,body,timeout=json.loads(sys.argv[1])\n"
            "data=None if body is None else json.dumps(body).encode()\n"
            "req=urllib.request.Request(url,data=data,method=method,headers={'Content-Type':'application/json'})\n"
            "try:\n r=urllib.request.urlopen(req,timeout=timeout)\n"
            " code=r.status; text=r.read().decode(errors='replace')\n"
            "except urllib.error.HTTPError as e:\n code=e.code; text=e.read().decode(errors='replace')\n"
            "except OSError as e:\n code=0; text=json.dumps(str(e))\n"
            "print(json.dumps([code,text]))\n"
        )
        done = self.run(host, [sys.executable, "-c", script, json.dumps([method, url, body, timeout])],
                        {"PATH": os.environ.get("PATH", "")}, timeout + 30)
        code, text = json.loads(done.stdout.strip().splitlines()[-1])
        try:
            return code, json.loads(text)
        except ValueError:
            return code, text

    def wait_http(self, host: str, url: str, timeout: float, process: subprocess.Popen | None = None,
                  log: Path | None = None, accept: tuple[int, ...] = (200,)) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"{url} exited with {process.returncode}:\n{_tail(log)}")
            if self.http(host, "GET", url, timeout=5)[0] in accept:
                return
            time.sleep(0.5)
        raise AssertionError(f"{url} did not answer within {timeout:.0f} s:\n{_tail(log)}")

    def close(self) -> None:
        for process in reversed(self.processes):
            kill(process)
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)


def kill(process: subprocess.Popen) -> None:
    """End ``process`` and its session (the process group it leads), politely then firmly."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def kill_now(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` and its session at once, as a host that loses power (nothing cleans up)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(log: Path | None) -> str:
    if log is None:
        return ""
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-4000:]
    return ""


def remove_orphans() -> None:
    """Namespaces an earlier run left behind (it was killed before its clean-up): those whose test
    process (the pid in their name) is gone."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for name in (n for n in listed if n.startswith(PREFIX)):
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextlib.contextmanager
def network(*names: str) -> Iterator[Network]:
    """Namespaces for ``names`` (the first is the hub), removed with everything started in them."""
    remove_orphans()
    net = Network()
    try:
        for name in names:
            net.add(name)
        yield net
    finally:
        net.close()
