"""Where a real gateway without ``upstream`` may connect: names that resolve to loopback, private,
metadata or IPv4-mapped addresses are refused before any byte goes out, through an AWS-looking
name (intercepted) or an allow_hosts name (tunnelled); an allowed one is resolved once and the
connection pinned to the address that was checked, with the name kept in TLS SNI. Plain HTTP proxy
requests are refused with or without credentials.

The names resolve on this machine only: ``socket.gethostname()`` through /etc/hosts, and AWS-looking
names through a table the gateway process reads at the resolver's boundary (``socket.getaddrinfo``,
replaced by a ``sitecustomize`` that only the test puts on the gateway's PYTHONPATH), as an
/etc/hosts entry would. The gateway's own code calls the real resolver either way."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.support.gateway import Gateway
from tests.support.raw import connect

SITECUSTOMIZE = '''
import json, os, socket
_table_path = os.environ["TEST_HOSTS_FILE"]
_real = socket.getaddrinfo

def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    name = host.decode() if isinstance(host, bytes) else host
    with open(_table_path) as f:
        table = json.load(f)
    if name not in table:
        return _real(host, port, family, type, proto, flags)
    log = _table_path + ".log"
    seen = open(log).read().split().count(name) if os.path.exists(log) else 0
    with open(log, "a") as f:
        f.write(name + "\\n")
    answers = table[name][min(seen, len(table[name]) - 1)]  # one list of addresses per lookup; the last repeats
    port = int(port or 0)
    return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)) if ":" in a else
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers]

socket.getaddrinfo = getaddrinfo
'''


class Listener:
    """A TCP listener that keeps every byte each connection sends it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            data = b""
            try:
                while chunk := conn.recv(65536):
                    data += chunk
            except OSError:
                pass
            conn.close()
            self.received.append(data)

    def close(self) -> None:
        self.sock.close()


# AWS-looking names (customer resources under amazonaws.com) and what they resolve to
LOOPBACK = "internal-app-1.us-east-1.elb.amazonaws.com"
MAPPED = "internal-app-2.us-east-1.elb.amazonaws.com"
METADATA = "abc123.execute-api.us-east-1.amazonaws.com"
PRIVATE = "vpce-0a1b2c.s3.us-east-1.vpce.amazonaws.com"
MIXED = "mydb.cluster-xyz.us-east-1.rds.amazonaws.com"
REBINDING = "internal-app-3.us-east-1.elb.amazonaws.com"
OWNED = "agent-owned.execute-api.us-east-1.amazonaws.com"  # an endpoint the agent itself could run
TABLE = {
    OWNED: [["127.0.0.1"]],
    LOOPBACK: [["127.0.0.1"]],
    MAPPED: [["::ffff:127.0.0.1"]],
    METADATA: [["169.254.169.254"]],
    PRIVATE: [["10.0.0.7"]],
    MIXED: [["52.94.133.131", "127.0.0.1"]],
    REBINDING: [["127.0.0.1"], ["169.254.169.254"]],  # checked once; a second lookup would say metadata
}


@pytest.fixture(scope="module")
def listeners():
    refused, allowed = Listener(), Listener()
    yield refused, allowed
    refused.close()
    allowed.close()


@pytest.fixture(scope="module")
def resolving_gateway(tmp_path_factory, issuer, moto, listeners):
    """A gateway with no ``upstream``: AWS calls go to the address their host resolves to. Its STS
    calls (JIT credentials) go to moto; ``127.0.0.1:<allowed port>`` is on allow_private; the
    machine's own host name is on allow_hosts on both listeners' ports."""
    refused, allowed = listeners
    home = tmp_path_factory.mktemp("resolving")
    site = home / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (home / "hosts.json").write_text(json.dumps(TABLE))
    name = socket.gethostname()
    gw = Gateway(home / "gw", issuer=issuer.issuer, upstream="",
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key),
                 settings={"allow_private": [f"127.0.0.1:{allowed.port}", f"{name}:{allowed.port}"],
                           "allow_hosts": [f"{name}:{refused.port}", f"{name}:{allowed.port}"]},
                 env={"PYTHONPATH": str(site), "TEST_HOSTS_FILE": str(home / "hosts.json"),
                      "AWS_ENDPOINT_URL_STS": moto.url})
    gw.hosts_log = Path(str(home / "hosts.json") + ".log")
    with gw:
        yield gw
    print(gw.log()[-4000:])


def sts_through(gw, token: str, host: str, port: int):
    return boto3.client("sts", region_name="us-east-1", endpoint_url=f"https://{host}:{port}",
                        aws_access_key_id="agentgate", aws_secret_access_key="x", verify=str(gw.ca_file),
                        config=botocore.config.Config(proxies={"https": gw.proxy_url(token)},
                                                      retries={"total_max_attempts": 1}, connect_timeout=5,
                                                      read_timeout=10))


def records_of(gw, sub: str) -> list[dict]:
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in gw.records() if r["principal"] == sub]
        if found or time.monotonic() > deadline:
            time.sleep(0.3)
            return [r for r in gw.records() if r["principal"] == sub]
        time.sleep(0.1)


@pytest.mark.parametrize("host, words", [
    (LOOPBACK, "resolves to 127.0.0.1, a loopback address"),
    (MAPPED, "resolves to ::ffff:127.0.0.1, a loopback address"),
    (METADATA, "resolves to 169.254.169.254, a metadata address"),
    (PRIVATE, "resolves to 10.0.0.7, a private address"),
    (MIXED, "resolves to 127.0.0.1, a loopback address"),
])
def test_an_aws_name_resolving_off_limits_is_refused_before_any_byte(resolving_gateway, listeners, issuer, host, words):
    refused, _ = listeners
    sub = f"agent-{host.split('.')[0]}"
    before = len(refused.received)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        sts_through(resolving_gateway, issuer.mint(sub), host, refused.port).get_caller_identity()
    err = e.value.response["Error"]
    assert err["Code"] == "AccessDenied" and words in err["Message"] and "allow_private" in err["Message"], err
    time.sleep(0.5)
    assert len(refused.received) == before, "the gateway connected to the loopback listener"
    recs = records_of(resolving_gateway, sub)
    assert len(recs) == 1, recs
    r = recs[0]
    assert (r["outcome"], r["decision"], r["rule"], r["status"]) == ("refused", "deny", "agentgate:egress", 403)
    assert words in r["error"]


def test_an_allowed_name_is_resolved_once_and_pinned_with_its_name_in_sni(resolving_gateway, listeners, issuer):
    """The name resolves to an allowed address at first and to the metadata address after that.
    The first call goes to the address that was checked (the listener sees a TLS ClientHello
    naming the host) after one lookup; the next agent connection looks it up again, and that
    answer is judged and refused: no second resolution reaches an unchecked address."""
    _, allowed = listeners
    before = len(allowed.received)
    client = sts_through(resolving_gateway, issuer.mint("agent-pinned"), REBINDING, allowed.port)
    with pytest.raises(botocore.exceptions.ClientError) as e:  # the listener is not an HTTPS server
        client.get_caller_identity()
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502
    deadline = time.monotonic() + 5
    while len(allowed.received) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    hellos = allowed.received[before:]
    assert len(hellos) == 1 and hellos[0][:1] == b"\x16" and REBINDING.encode() in hellos[0], hellos  # TLS, SNI
    assert resolving_gateway.hosts_log.read_text().split().count(REBINDING) == 1

    with pytest.raises(botocore.exceptions.ClientError) as e:  # a new agent connection: a new lookup, judged
        sts_through(resolving_gateway, issuer.mint("agent-pinned"), REBINDING, allowed.port).get_caller_identity()
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    assert "resolves to 169.254.169.254, a metadata address" in e.value.response["Error"]["Message"]
    time.sleep(0.5)
    assert len(allowed.received) == before + 1
    assert resolving_gateway.hosts_log.read_text().split().count(REBINDING) == 2




@pytest.mark.parametrize("host_header, sni", [
    ("secretsmanager.us-east-1.amazonaws.com", OWNED),  # decided and signed for Secrets Manager
    (OWNED, "secretsmanager.us-east-1.amazonaws.com"),  # the TLS name of another host
    (f"{OWNED}.", OWNED),  # the same host, written with its root dot: fine
])
def test_a_call_goes_only_to_the_host_its_tunnel_was_opened_to(resolving_gateway, listeners, issuer, host_header, sni):
    """A tunnel opened to an endpoint the agent could own (allowed here: it resolves to the allowed
    listener) carrying a request whose Host, or TLS server name, is another AWS host: the call would
    be decided and signed for that host and sent to the tunnel's, where the agent would collect a
    signed request and an answer no masking saw. Refused before anything leaves the gateway."""
    _, allowed = listeners
    sub = f"agent-elsewhere-{len(host_header)}-{len(sni)}"
    token = issuer.mint(sub)
    before = len(allowed.received)
    s, head = connect(resolving_gateway.port, f"{OWNED}:{allowed.port}", token)
    assert head.startswith(b"HTTP/1.1 200"), head
    tls = ssl.create_default_context(cafile=str(resolving_gateway.ca_file)).wrap_socket(s, server_hostname=sni)
    body = b'{"SecretId": "db-pass"}'
    tls.sendall(b"POST / HTTP/1.1\r\nHost: " + host_header.encode() + b"\r\nX-Amz-Target: secretsmanager.GetSecretValue\r\n"
                b"Content-Type: application/x-amz-json-1.1\r\nX-Amz-Date: 20260101T000000Z\r\n"
                b"Authorization: AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/secretsmanager/aws4_request, "
                b"SignedHeaders=host;x-amz-date, Signature=" + b"0" * 64 + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    answer = http.client.HTTPResponse(tls)
    answer.begin()
    text = answer.read().decode()
    tls.close()
    records = records_of(resolving_gateway, sub)
    if host_header.rstrip(".") == sni:
        assert answer.status != 400 and len(records) == 1, text  # judged as any call to that host
        return
    assert answer.status == 400 and "is not the host its tunnel was opened to" in text, text
    time.sleep(0.5)
    assert len(allowed.received) == before, "the gateway connected to the tunnel's host"
    assert len(records) == 1 and (records[0]["outcome"], records[0]["rule"]) == ("refused", "agentgate:egress")


def test_an_allow_hosts_name_resolving_to_this_machine_is_refused_unless_allowed(resolving_gateway, listeners, issuer):
    """allow_hosts holds this machine's host name on two ports; it resolves (through /etc/hosts) to
    a loopback or private address. On the port allow_private does not name, CONNECT is refused and
    the listener sees nothing; on the one it names, the tunnel reaches the listener."""
    refused, allowed = listeners
    name = socket.gethostname()
    token = issuer.mint("agent-tunnel")
    before = len(refused.received)
    s, head = connect(resolving_gateway.port, f"{name}:{refused.port}", token)
    s.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert f"{name}:{refused.port} resolves to".encode() in head and b"allow_private" in head
    time.sleep(0.5)
    assert len(refused.received) == before
    connects = [r for r in resolving_gateway.records() if r["kind"] == "connect" and r["host"].startswith(f"{name}:{refused.port}")]
    assert len(connects) == 1 and connects[0]["outcome"] == "refused" and "resolves to" in connects[0]["error"]

    before = len(allowed.received)
    s, head = connect(resolving_gateway.port, f"{name}:{allowed.port}", token)
    assert head.startswith(b"HTTP/1.1 200"), head
    s.sendall(b"through the tunnel")
    s.close()
    deadline = time.monotonic() + 5
    while len(allowed.received) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert allowed.received[before:] == [b"through the tunnel"]


@pytest.mark.parametrize("target", ["http://sts.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15",
                                    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                                    "http://127.0.0.1:{port}/"])
@pytest.mark.parametrize("with_token", [None, "valid", "forged"])
def test_plain_http_proxy_requests_are_refused(resolving_gateway, listeners, issuer, target, with_token):
    """A plain-HTTP proxy request (no CONNECT) is refused whatever it carries. Its record gives the
    URL as sent (http://) and names the subject of its proxy credentials when they are a valid token
    (as a refused CONNECT's does), never that of a token the issuer did not sign."""
    from tests.support.oidc import new_rsa_key

    refused, _ = listeners
    target = target.format(port=refused.port)
    before_seen, before_records = len(refused.received), len(resolving_gateway.records())
    token = (issuer.mint("agent-plain") if with_token == "valid" else
             issuer.mint("agent-plain", key=new_rsa_key()) if with_token == "forged" else None)
    with socket.create_connection(("127.0.0.1", resolving_gateway.port), timeout=10) as s:
        head = f"GET {target} HTTP/1.1\r\nHost: {target.split('/')[2]}\r\n"
        if token:
            head += f"Proxy-Authorization: Basic {base64.b64encode(f'agent:{token}'.encode()).decode()}\r\n"
        s.sendall((head + "\r\n").encode())
        answer = http.client.HTTPResponse(s)
        answer.begin()
        body = answer.read()
    assert answer.status == 403 and b"over HTTPS only" in body, body
    time.sleep(0.5)
    assert len(refused.received) == before_seen
    new = resolving_gateway.records()[before_records:]
    assert len(new) == 1 and new[0]["outcome"] == "refused" and new[0]["rule"] == "agentgate:egress", new
    assert new[0]["principal"] == ("agent-plain" if with_token == "valid" else None), new[0]
    assert new[0]["url"].split("?")[0] == target.split("?")[0], new[0]["url"]  # (its query's values masked)


@pytest.mark.parametrize("tls, host, words", [
    (False, "sts.amazonaws.com", "over HTTPS only"),  # plain HTTP in a tunnel to port 80
    (True, "169.254.169.254", "169.254.169.254 is not an AWS endpoint"),  # a Host that is not AWS
], ids=["plain-http-to-port-80", "host-not-aws"])
def test_a_request_refused_in_an_authenticated_tunnel_names_who_holds_it(resolving_gateway, issuer, tls, host, words):
    """A request egress refuses in a tunnel whose CONNECT carried the agent's token (plain HTTP to
    port 80 of an AWS host, or a Host that is not AWS) is refused before auth reads it; its record
    names the principal the tunnel was opened by, as other refusals in such a tunnel do, and the URL
    with the scheme the request used."""
    sub = f"agent-in-tunnel-{'tls' if tls else 'plain'}"
    s, head = connect(resolving_gateway.port, f"sts.amazonaws.com:{443 if tls else 80}", issuer.mint(sub))
    assert head.startswith(b"HTTP/1.1 200"), head
    if tls:
        s = ssl.create_default_context(cafile=str(resolving_gateway.ca_file)).wrap_socket(
            s, server_hostname="sts.amazonaws.com")
    s.sendall(f"GET /?Action=GetCallerIdentity&Version=2011-06-15 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = http.client.HTTPResponse(s)
    answer.begin()
    text = answer.read().decode()
    s.close()
    assert answer.status == 403 and words in text, text
    records = records_of(resolving_gateway, sub)
    assert [(r["outcome"], r["rule"], r["status"]) for r in records] == [("refused", "agentgate:egress", 403)], (
        records, [(r["principal"], r["error"]) for r in resolving_gateway.records() if words in (r["error"] or "")])
    # the URL as the agent sent it: plain HTTP in the tunnel to port 80, HTTPS in the other
    scheme = "https" if tls else "http"
    assert records[0]["url"].split("?")[0] == f"{scheme}://{host}/", records[0]["url"]


@pytest.mark.parametrize("first", [b"P", b"PO", b"POST", b"POST /"])
def test_a_request_begun_in_small_pieces_is_not_relayed_raw(resolving_gateway, listeners, issuer, first):
    """An intercepted tunnel whose first bytes are too few to look like HTTP (a slow client, one
    that writes the verb on its own) is still read as HTTP. mitmproxy took such a start for another
    protocol and relayed the tunnel raw to the host: no stage read it, so a request with no token,
    or signed with keys of the agent's own, reached the endpoint undecided, unsigned by the gateway
    and unrecorded. Here it carries no token, and is refused as any request without one is."""
    _, allowed = listeners
    before, seen = len(resolving_gateway.records()), len(allowed.received)
    s, head = connect(resolving_gateway.port, f"{OWNED}:{allowed.port}", None)  # no proxy credentials
    assert head.startswith(b"HTTP/1.1 200"), head
    tls = ssl.create_default_context(cafile=str(resolving_gateway.ca_file)).wrap_socket(s, server_hostname=OWNED)
    tls.settimeout(15)
    body = b'{"Bucket": "exfiltration"}'
    request = (b"POST / HTTP/1.1\r\nHost: " + OWNED.encode() + b"\r\nContent-Type: application/json\r\n"
               b"Authorization: AWS4-HMAC-SHA256 Credential=AKIAAGENTSOWNKEY/20260101/us-east-1/execute-api/aws4_request, "
               b"SignedHeaders=host, Signature=" + b"0" * 64 + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert request.startswith(first)
    tls.sendall(first)
    time.sleep(0.5)
    tls.sendall(request[len(first):])
    answer = http.client.HTTPResponse(tls)
    try:
        answer.begin()
        status, text = answer.status, answer.read().decode()
    except (OSError, http.client.HTTPException) as e:
        status, text = None, repr(e)
    tls.close()
    time.sleep(0.5)
    assert len(allowed.received) == seen, f"the tunnel's bytes went to its host: {allowed.received[seen:]!r:.200}"
    assert status == 403 and "no token was presented" in text, text
    new = [r for r in resolving_gateway.records()[before:] if r["host"] == OWNED]
    assert len(new) == 1 and (new[0]["outcome"], new[0]["decision"]) == ("refused", "deny"), new
