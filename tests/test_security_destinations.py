"""Which addresses the gateway refuses to connect to, what allow_private allows, and the request
head checks, as plain functions (core.destinations, addons.limits.head_problem); then the egress
stage's ``server_connect`` hook, the check every connection the proxy opens passes. The same
rules through a real gateway are in test_security_egress.py."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from addons.core import destinations
from addons.core.destinations import category, check, parse_allowed, pick
from addons.limits import head_problem
from addons.settings import SettingsError, load_settings


@pytest.mark.parametrize("address, expected", [
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("169.254.170.2", "metadata"),
    ("169.254.170.23", "metadata"), ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 form of 169.254.169.254
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("::127.0.0.1", "loopback"), ("2002:7f00:1::", "loopback"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("100.64.0.1", "private"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"), ("::ffff:10.0.0.1", "private"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("52.94.133.131", None), ("2600:1f18::1", None), ("::ffff:52.94.133.131", None),
])
def test_address_categories(address, expected):
    assert category(ipaddress.ip_address(address)) == expected


def test_allow_private_syntax():
    allowed = parse_allowed(["10.0.0.0/8", "[fd00::/8]:443", "db.internal:5432", "127.0.0.1:9000", "*.corp.example",
                             "::1", "[::1]:8443"])
    ip = ipaddress.ip_address
    assert destinations.permitted(allowed, "x", ip("10.9.9.9"), 1)
    assert destinations.permitted(allowed, "x", ip("::ffff:10.9.9.9"), 1)  # the IPv4-mapped form of an allowed range
    assert destinations.permitted(allowed, "x", ip("fd00::7"), 443) and not destinations.permitted(allowed, "x", ip("fd00::7"), 80)
    assert destinations.permitted(allowed, "DB.internal.", ip("192.168.0.5"), 5432)
    assert not destinations.permitted(allowed, "db.internal", ip("192.168.0.5"), 5433)
    assert destinations.permitted(allowed, "127.0.0.1", ip("127.0.0.1"), 9000)
    assert not destinations.permitted(allowed, "127.0.0.1", ip("127.0.0.1"), 9001)
    assert destinations.permitted(allowed, "a.corp.example", ip("172.20.0.1"), 1)


def test_a_name_never_allows_a_metadata_address():
    allowed = parse_allowed(["*", "imds.corp.example"])
    v = pick("imds.corp.example", 80, [ipaddress.ip_address("169.254.169.254")], allowed)
    assert not v.ok and "metadata" in v.refusal and 'allow_private = ["169.254.169.254"]' in v.refusal
    v = pick("imds.corp.example", 80, [ipaddress.ip_address("169.254.169.254")], parse_allowed(["169.254.169.254"]))
    assert v.ok and v.address == "169.254.169.254"


@pytest.mark.parametrize("entry, words", [
    ("10.1.2.3/8", "host bits set"), ("[fd00::1", "without its ]"), ("a b", "not an address"),
    ("db:http", "not a port number"), ("", "empty"), ("1.2.3.4:70000", "out of range"), ("[::1]x", "nothing or :PORT"),
])
def test_allow_private_bad_entries_are_named(entry, words):
    with pytest.raises(ValueError) as e:
        parse_allowed(["10.0.0.0/8", entry])
    assert repr(entry) in str(e.value) and words in str(e.value)


def test_settings_refuse_bad_allow_private_and_caps(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTGATE_HOME", str(tmp_path))
    monkeypatch.setenv("AGENTGATE_ALLOW_PRIVATE", "10.0.0.0/8,10.1.2.3/8")
    with pytest.raises(SettingsError, match="10.1.2.3/8"):
        load_settings()
    monkeypatch.delenv("AGENTGATE_ALLOW_PRIVATE")
    monkeypatch.setenv("AGENTGATE_MAX_BODY_BYTES", "0")
    with pytest.raises(SettingsError, match="max_body_bytes must be a positive number"):
        load_settings()
    monkeypatch.setenv("AGENTGATE_MAX_BODY_BYTES", "2048")
    (tmp_path / "agentgate.toml").write_text('max_header_bytes = 9000\nmax_url_bytes = 300\n')
    s = load_settings(max_url_bytes=400)  # a flag beats the file
    assert (s.max_header_bytes, s.max_url_bytes, s.max_body_bytes) == (9000, 400, 2048)


def test_every_resolved_address_is_judged():
    ip = ipaddress.ip_address
    # one private address among public ones is enough to refuse the name
    v = pick("mixed.example", 443, [ip("52.94.133.131"), ip("10.0.0.5")], [])
    assert not v.ok and "10.0.0.5, a private address" in v.refusal
    v = pick("public.example", 443, [ip("52.94.133.131"), ip("2600:1f18::1")], [])
    assert v.ok and v.address == "52.94.133.131"


def test_names_are_resolved_with_the_system_resolver():
    """``localhost`` is refused by name; this machine's own host name resolves (through
    /etc/hosts) to its own address, which is loopback or private: refused unless allowed, and
    then pinned to the address that was checked."""
    name = socket.gethostname()
    addresses = [ipaddress.ip_address(a[4][0]) for a in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)]
    assert all(category(a) in ("loopback", "private", "link-local") for a in addresses), addresses
    v = asyncio.run(check(name, 443, []))
    assert not v.ok and f"{name}:443 resolves to " in v.refusal
    v = asyncio.run(check(name, 443, parse_allowed([f"{name}:443"])))
    assert v.ok and ipaddress.ip_address(v.address) in addresses
    v = asyncio.run(check("localhost", 443, []))
    assert not v.ok and "localhost:443 names a loopback address" in v.refusal
    v = asyncio.run(check("does-not-exist.invalid", 443, []))
    assert not v.ok and v.refusal is None and "does not resolve" in v.unresolved


@pytest.mark.parametrize("head, words", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
    (b"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF"),
    (b"GET / HTTP/1.1\r\nHost: a\n\n", "bare LF"),
    (b"GET / HTTP/1.1\r\nX: a\rContent-Length: 5\r\n\r\n", "bare CR"),
    (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", "NUL"),
    (b"GET / HTTP/1.1\r\nX: a\r\n Content-Length: 5\r\n\r\n", "obs-fold"),
    (b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", "obs-fold"),
])
def test_request_head_problems(head, words):
    problem = head_problem(head)
    assert (problem is None) if words is None else (words in problem)


# -- the egress stage's last check: every connection the proxy opens ------------------------------


def _server_connect(egress, client, address, sni=None):
    from mitmproxy.proxy.server_hooks import ServerConnectionHookData
    from mitmproxy.test import tflow

    server = tflow.tserver_conn()
    server.address, server.sni, server.error = address, sni, None
    asyncio.run(egress.server_connect(ServerConnectionHookData(client=client, server=server)))
    return server


def test_server_connect_refuses_an_unchecked_address_and_pins_a_name():
    from mitmproxy.test import tflow

    from addons.egress import Egress

    client = tflow.tclient_conn()
    egress = Egress(upstream="http://localhost:5000")
    assert _server_connect(egress, client, ("localhost", 5000)).error is None  # the operator's upstream
    s = _server_connect(egress, client, ("169.254.169.254", 80))
    assert "metadata address" in s.error
    s = _server_connect(egress, client, ("localhost", 5001))
    assert "loopback" in s.error
    s = _server_connect(egress, client, (socket.gethostname(), 443))
    assert "resolves to" in s.error
    allowed = Egress(allow_private=[f"{socket.gethostname()}:443"])
    s = _server_connect(allowed, client, (socket.gethostname(), 443))
    assert s.error is None and destinations.literal(s.address[0]) is not None and s.sni == socket.gethostname()
    # what egress pinned for this client goes to the checked address, SNI keeping the name
    egress._pin(client, ("10.0.0.9", 443), "10.0.0.9", "vpce-1.s3.us-east-1.vpce.amazonaws.com")
    s = _server_connect(egress, client, ("10.0.0.9", 443), sni="10.0.0.9")
    assert s.error is None and s.sni == client.sni  # the agent's own SNI
    other = tflow.tclient_conn()
    assert "private address" in _server_connect(egress, other, ("10.0.0.9", 443)).error  # a pin is per connection
