"""Where the gateway may open a connection.

An address is off limits when it is a cloud metadata address (169.254.169.254, fd00:ec2::254,
the ECS and EKS credential endpoints), loopback, link-local, private (RFC 1918, unique local
fc00::/7, shared 100.64.0.0/10 and every other range that is not globally routable), unspecified,
multicast or reserved. IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``,
IPv4-compatible, NAT64 ``64:ff9b::/96``, 6to4, Teredo) are judged by the IPv4 address inside.

An operator allows some of them with ``allow_private``, a list of entries, each optionally with a
port (``ENTRY:PORT``, IPv6 in brackets: ``[fd00::1]:443``, ``[fd00::/8]:443``):

    10.0.0.0/8, fd00::/8        a range (CIDR)
    10.1.2.3, ::1               one address
    db.internal, *.corp.example a host name (glob), as the agent asked for it

A name entry allows whatever the name resolves to, except metadata addresses: those are allowed
only by an entry that names the address (or a range holding it), never through DNS.

A name is checked by resolving it and judging *every* address it resolves to; the connection is
then made to the address that was checked (``pick``), so a second resolution cannot rebind it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import ipaddress
import re
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # EC2 instance metadata (IMDS), also GCP and Azure
    "fd00:ec2::254",  # EC2 IMDS over IPv6
    "169.254.170.2",  # ECS task credentials
    "169.254.170.23",  # EKS Pod Identity agent
    "fd00:ec2::23",  # EKS Pod Identity agent over IPv6
))
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"})

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAME = re.compile(r"^[a-z0-9*?_.-]+$")


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that carry one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated); not :: or ::1
        return ipaddress.IPv4Address(int(ip))
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def category(ip: IPAddress) -> str | None:
    """Why ``ip`` is off limits ("metadata", "loopback", "link-local", "private", "unspecified",
    "multicast", "reserved"), or None for a globally routable address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        if ip in METADATA:
            return "metadata"
        inner = _embedded_v4(ip)
        if inner is not None:
            return category(inner)  # a NAT64 (DNS64) form of a public address is public
    if ip in METADATA:
        return "metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private or not ip.is_global:  # RFC 1918, fc00::/7, 100.64.0.0/10 and the other non-global ranges
        return "private"
    return None


def literal(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one (``[::1]`` included), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _strip_dot(name: str) -> str:
    return name.lower().rstrip(".")


def name_category(host: str) -> str | None:
    """What a host name says about itself before any lookup: "loopback" for localhost and
    ``*.localhost`` (RFC 6761), "metadata" for the metadata services' names; None otherwise."""
    h = _strip_dot(host.strip("[]"))
    if h == "localhost" or h.endswith(".localhost"):
        return "loopback"
    if h in METADATA_NAMES:
        return "metadata"
    ip = literal(h)
    return category(ip) if ip is not None else None


# -- allow_private -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Allowed:
    """One ``allow_private`` entry: a range of addresses or a host-name glob, and maybe a port."""

    text: str
    network: IPNetwork | None = None
    name: str | None = None
    port: int | None = None

    def matches(self, host: str, ip: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return _within(ip, self.network)
        if self.name is not None and category(ip) != "metadata":
            return fnmatch.fnmatchcase(_strip_dot(host.strip("[]")), self.name)
        return False


def _within(ip: IPAddress, network: IPNetwork) -> bool:
    if ip.version == network.version:
        return ip in network
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_v4(ip)) is not None:
        return inner in network
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        inside, sep, rest = entry[1:].partition("]")
        if not sep:
            raise ValueError("an opening [ without its ]")
        if not rest:
            return inside, None
        if not rest.startswith(":") or not rest[1:].isdigit():
            raise ValueError("after [address] comes nothing or :PORT")
        return inside, int(rest[1:])
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if not port.isdigit():
            raise ValueError(f"{port!r} is not a port number")
        return host, int(port)
    return entry, None  # no port, or a bare IPv6 address or range


def parse_allowed(entries: list[str]) -> list[Allowed]:
    """The ``allow_private`` entries, parsed. ValueError names the first entry that is wrong."""
    out = []
    for raw in entries:
        entry = raw.strip()
        try:
            if not entry:
                raise ValueError("an empty entry")
            host, port = _split_port(entry)
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"port {port} is out of range")
            if "/" in host:
                try:
                    out.append(Allowed(entry, network=ipaddress.ip_network(host, strict=True), port=port))
                except ValueError as e:
                    raise ValueError(str(e)) from None
            elif (ip := literal(host)) is not None:
                out.append(Allowed(entry, network=ipaddress.ip_network(ip), port=port))
            elif _NAME.match(host.lower()):
                out.append(Allowed(entry, name=_strip_dot(host), port=port))
            else:
                raise ValueError("not an address, a CIDR range or a host name")
        except ValueError as e:
            raise ValueError(f"allow_private entry {raw!r}: {e}") from None
    return out


def permitted(allowed: list[Allowed], host: str, ip: IPAddress, port: int) -> bool:
    return any(a.matches(host, ip, port) for a in allowed)


# -- the check -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of checking a destination: the address to connect to, or why not."""

    host: str
    port: int
    address: str | None = None
    refusal: str | None = None  # set when the destination is off limits
    unresolved: str | None = None  # set when the name did not resolve

    @property
    def ok(self) -> bool:
        return self.address is not None


def _shown(ip: IPAddress) -> str:
    """``ip`` as a person reads it: an IPv4-mapped address with its IPv4 part dotted."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def refusal_text(host: str, port: int, ip: IPAddress, why: str) -> str:
    """Why a connection to ``host:port`` (``ip``) is refused, and what an operator can do."""
    head = f"{host}:{port} is a {why} address" if literal(host) == ip else \
        f"{host}:{port} resolves to {_shown(ip)}, a {why} address"
    entry = _embedded_v4(ip) or ip if isinstance(ip, ipaddress.IPv6Address) else ip
    if why == "metadata":
        how = (f"an operator can allow it only by address, with allow_private = [\"{entry}\"], and should not "
               "unless agents are meant to read this machine's credentials")
    else:
        how = f"if agents need it, an operator can allow it with allow_private = [\"{entry}\"] (or a range holding it)"
    return f"{head}; agentgate does not connect to {why} addresses: {how}"


def pick(host: str, port: int, addresses: list[IPAddress], allowed: list[Allowed]) -> Verdict:
    """Judge every address ``host`` resolved to: refused when any is off limits and not allowed
    (a name with one private address among public ones is still refused), else the first one."""
    if not addresses:
        return Verdict(host, port, unresolved=f"{host} has no address")
    for ip in addresses:
        why = category(ip)
        if why is not None and not permitted(allowed, host, ip, port):
            return Verdict(host, port, refusal=refusal_text(host, port, ip, why))
    return Verdict(host, port, address=str(addresses[0]))


_STANDS_FOR = {"loopback": ipaddress.ip_address("127.0.0.1"), "metadata": ipaddress.ip_address("169.254.169.254")}


def check_name(host: str, port: int, allowed: list[Allowed]) -> Verdict | None:
    """What can be said of ``host`` before any lookup: a Verdict for an IP literal or a name that
    is off limits by itself (localhost, the metadata services' names) and not allowed; None when
    it has to be resolved."""
    ip = literal(host)
    if ip is not None:
        return pick(host, port, [ip], allowed)
    why = name_category(host)
    if why is not None and not permitted(allowed, host, _STANDS_FOR[why], port):
        return Verdict(host, port, refusal=f"{host}:{port} names a {why} address; agentgate does not connect to "
                                           f"{why} addresses unless an operator allows them with allow_private")
    return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (the system resolver, off the event loop), in order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in seen:
            seen.append(ip)
    return seen


async def check(host: str, port: int, allowed: list[Allowed]) -> Verdict:
    """Where a connection to ``host:port`` may go: the checked address to connect to, or why not."""
    h = host.strip("[]")
    early = check_name(h, port, allowed)
    if early is not None:
        return early
    try:
        addresses = await resolve(h, port)
    except (socket.gaierror, UnicodeError, OSError) as e:
        return Verdict(h, port, unresolved=f"{h} does not resolve ({getattr(e, 'strerror', None) or e})")
    return pick(h, port, addresses, allowed)
