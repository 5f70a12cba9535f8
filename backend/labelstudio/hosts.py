"""Which hosts, ports and addresses the backend may fetch images from (the SSRF guard).

Why: task data is written by whoever can import tasks, and the backend fetches whatever URL a
task names, from inside the network it runs in. Without a guard a task could make it read a
cloud metadata service (``169.254.169.254``), an internal admin port on ``127.0.0.1``, or
anything else only the backend can reach. The rules:

* A host is fetched only if it is Label Studio's own ``host:port`` or is listed in
  ``ISNET_ALLOWED_HOSTS`` (``host`` = any port, ``host:port`` = that port only). Names are
  compared as written: ``localhost`` does not allow ``127.0.0.1``.
* Two relaxations, both limited to hosts whose every address is public (globally routable):
  redirects issued by Label Studio itself (its presign endpoint sends clients to the bucket's
  signed URL), and every host when ``ISNET_ALLOWED_HOSTS`` contains ``*``.
* Link-local (``169.254.0.0/16``, ``fe80::/10``), cloud metadata, multicast, unspecified and
  reserved addresses are never fetched, whatever is allowed, also when written as IPv4-mapped,
  6to4 or NAT64 IPv6 addresses.
* Names are resolved here and the connection is made to the addresses that were checked, so a
  DNS answer that changes between check and connect (rebinding) cannot slip past.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., Sequence[tuple[Any, ...]]]
"""``socket.getaddrinfo``-compatible: ``(host, port, type=...) -> [(family, type, proto, name, sockaddr)]``."""

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
    )
)
DEFAULT_PORTS = {"http": 80, "https": 443}


class BlockedURL(ValueError):
    """A URL the guard refuses; the message says why and, where it helps, what to allow."""


@dataclass(frozen=True)
class HostRule:
    host: str
    port: int | None
    """``None``: any port."""

    def matches(self, host: str, port: int) -> bool:
        return self.host == host and (self.port is None or self.port == port)


def normalise_host(host: str) -> str:
    """Lower case, no trailing dot, IP literals in their canonical form."""
    host = host.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host


def parse_rule(entry: str) -> HostRule:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address."""
    text = entry.strip()
    try:
        return HostRule(str(ipaddress.ip_address(text.strip("[]"))), None)
    except ValueError:
        pass
    if not text or any(c in text for c in "/@?#") or any(c.isspace() for c in text):
        raise ValueError(f"ISNET_ALLOWED_HOSTS entry {entry!r} is not host or host:port")
    parts = urlsplit("//" + text)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"ISNET_ALLOWED_HOSTS entry {entry!r} has an invalid port") from exc
    if not parts.hostname:
        raise ValueError(f"ISNET_ALLOWED_HOSTS entry {entry!r} is not host or host:port")
    return HostRule(normalise_host(parts.hostname), port)


def never_fetched(ip: IPAddress) -> str | None:
    """Why an address is refused whatever is allowed, or ``None``."""
    ip = _embedded(ip)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.version == 4 and ip.is_reserved:  # 240.0.0.0/4; IPv6's "reserved" ::/8 holds ::1
        return "a reserved address"
    return None


class HostPolicy:
    """Decides, per URL hop, whether it may be fetched and at which addresses."""

    def __init__(
        self,
        label_studio_url: str,
        allowed_hosts: Sequence[str] = (),
        resolver: Resolver = socket.getaddrinfo,
    ) -> None:
        parts = urlsplit(label_studio_url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"LABEL_STUDIO_URL={label_studio_url!r} is not an http(s) URL")
        self.label_studio = HostRule(normalise_host(parts.hostname), parts.port or DEFAULT_PORTS[parts.scheme])
        self.any_public = "*" in allowed_hosts
        self.rules = tuple(parse_rule(h) for h in allowed_hosts if h != "*")
        self.resolver = resolver

    def is_label_studio(self, host: str, port: int) -> bool:
        return self.label_studio.matches(normalise_host(host), port)

    def is_named(self, host: str, port: int) -> bool:
        """Label Studio itself or an ``ISNET_ALLOWED_HOSTS`` entry."""
        host = normalise_host(host)
        return self.label_studio.matches(host, port) or any(rule.matches(host, port) for rule in self.rules)

    def addresses(self, host: str, port: int, redirected_by_label_studio: bool = False) -> list[str]:
        """The checked addresses to connect to for ``host:port``, or :class:`BlockedURL`.

        Raises :class:`OSError` (``socket.gaierror``) when the name does not resolve.
        """
        host = normalise_host(host)
        literal = _literal(host)
        reason = never_fetched(literal) if literal is not None else None
        if reason:
            raise BlockedURL(f"{host} is {reason}: never fetched")
        named = self.is_named(host, port)
        if not named and not (redirected_by_label_studio or self.any_public):
            raise BlockedURL(
                f"{_hostport(host, port)} is neither Label Studio ({_hostport(*self._ls())}) nor in "
                f"ISNET_ALLOWED_HOSTS; add it there to allow images from it"
            )
        ips = [literal] if literal is not None else self._resolve(host, port)
        for ip in ips:
            reason = never_fetched(ip)
            if reason:
                raise BlockedURL(f"{host} resolves to {ip}, {reason}: never fetched")
            if not named and not _embedded(ip).is_global:
                raise BlockedURL(
                    f"{host} is {ip}, a private address; only public hosts are fetched without being "
                    f"listed: add {_hostport(host, port)} to ISNET_ALLOWED_HOSTS to allow it"
                )
        return [str(ip) for ip in ips]

    def _ls(self) -> tuple[str, int]:
        return self.label_studio.host, self.label_studio.port or 0

    def _resolve(self, host: str, port: int) -> list[IPAddress]:
        seen: list[IPAddress] = []
        for info in self.resolver(host, port, type=socket.SOCK_STREAM):
            ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if ip not in seen:
                seen.append(ip)
        if not seen:
            raise socket.gaierror(f"{host} has no addresses")
        return seen


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped, 6to4 or NAT64 IPv6 address, so IPv4 rules apply to it."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
