"""A fast stand-in for AWS for benchmarks (moto is slower than the gateway): answers on loopback
with canned responses. STS AssumeRole gets credentials (counted); PUT bodies are read and
discarded; GET /<bucket>/big-<N> streams N bytes; anything else gets a small JSON answer.

It is one asyncio process with a hand-written HTTP/1.1 parser (keep-alive, Content-Length and
chunked bodies, Expect: 100-continue), so that it costs a small fraction of what a proxy in front
of it costs per call. ``--tls-port`` adds a TLS listener with a certificate for the AWS host names
(and 127.0.0.1), made at start and written with ``--tls-ca-out``, for clients that call it directly.

    python scripts/bench_upstream.py --port 0 --ready-file F   # writes the port to F
    python scripts/bench_upstream.py --tls-port 0 --tls-ca-out ca.pem --ready-file F
        # F gets "PORT TLS_PORT"

GET /__stats answers {"sts_calls": N, "requests": N}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import ssl
import tempfile
import uuid
from pathlib import Path

STS_RESPONSE = """<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
<Credentials><AccessKeyId>ASIABENCHBENCHBENCH1</AccessKeyId><SecretAccessKey>benchsecret</SecretAccessKey>
<SessionToken>benchtoken</SessionToken><Expiration>{exp}</Expiration></Credentials>
<AssumedRoleUser><AssumedRoleId>AROABENCH:{name}</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/agent-role/{name}</Arn></AssumedRoleUser>
</AssumeRoleResult><ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></AssumeRoleResponse>"""

BIG = re.compile(rb"/big-(\d+)")
SESSION_NAME = re.compile(rb"RoleSessionName=([^&]+)")
CHUNK = b"\0" * (1 << 20)
KEEP_BODY = 65536  # bytes of a request body kept for inspection; the rest is read and dropped
MAX_HEAD = 65536
STATS = {"sts_calls": 0, "requests": 0}
SLOW_STS = ""  # --slow-sts NAME: AssumeRole for session names containing NAME answers late
SLOW_STS_SECONDS = 5.0

HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILER = range(6)


def response_head(status: int, headers: list[tuple[str, str]], length: int) -> bytes:
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}", *(f"{k}: {v}" for k, v in headers),
             f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Server(asyncio.Protocol):
    """One client connection: requests are parsed as bytes arrive and answered in order."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.state = HEAD
        self.busy = False  # an answer is being written (a large download, a late STS answer)
        self.closing = False
        self.can_write: asyncio.Event | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.process()

    def process(self) -> None:
        buf = self.buf
        while buf and not self.busy and not self.closing:
            if self.state == HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        self.fail(431)
                    return
                lines = bytes(buf[:end]).split(b"\r\n")
                del buf[:end + 4]
                try:
                    self.method, self.target, version = lines[0].split(b" ", 2)
                except ValueError:
                    self.fail(400)
                    return
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                self.keep_alive = version == b"HTTP/1.1" and headers.get(b"connection", b"").lower() != b"close"
                self.keep = self.method != b"PUT"
                self.body = bytearray()
                if headers.get(b"expect", b"").lower() == b"100-continue":
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                    self.state = CHUNK_SIZE
                else:
                    try:
                        self.left = int(headers.get(b"content-length", b"0"))
                    except ValueError:
                        self.fail(400)
                        return
                    self.state = BODY
                    if not self.left:
                        self.done()
            elif self.state in (BODY, CHUNK_DATA):
                n = min(self.left, len(buf))
                if self.keep and len(self.body) < KEEP_BODY:
                    self.body += buf[:n]
                if n == len(buf):
                    buf.clear()
                else:
                    del buf[:n]
                self.left -= n
                if not self.left:
                    if self.state == BODY:
                        self.done()
                    else:
                        self.state = CHUNK_END
            elif self.state == CHUNK_END:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = CHUNK_SIZE
            elif self.state == CHUNK_SIZE:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                try:
                    self.left = int(bytes(buf[:eol]).split(b";")[0], 16)
                except ValueError:
                    self.fail(400)
                    return
                del buf[:eol + 2]
                self.state = CHUNK_DATA if self.left else TRAILER
            elif self.state == TRAILER:
                if buf[:2] == b"\r\n":
                    del buf[:2]
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    del buf[:end + 4]
                self.done()

    def fail(self, status: int) -> None:
        self.transport.write(response_head(status, [("Connection", "close")], 0))
        self.transport.close()
        self.closing = True

    def send(self, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.transport.write(response_head(200, headers, len(payload)) + payload)

    def done(self) -> None:
        """A whole request has arrived: answer it."""
        self.state = HEAD
        STATS["requests"] += 1
        rid = str(uuid.uuid4())
        body = bytes(self.body)
        if b"Action=AssumeRole" in body:
            STATS["sts_calls"] += 1
            m = SESSION_NAME.search(body)
            name = m.group(1).decode() if m else "x"
            exp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            payload = STS_RESPONSE.format(exp=exp, name=name, rid=rid).encode()
            headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)]
            if SLOW_STS and SLOW_STS in name:  # a fault to inject: STS hangs for this principal
                self.busy = True
                asyncio.get_running_loop().call_later(SLOW_STS_SECONDS, self._late, headers, payload)
                return
            self.send(headers, payload)
        elif self.target.startswith(b"/__stats"):
            self.send([("Content-Type", "application/json")], json.dumps(STATS).encode())
        elif self.method == b"GET" and (m := BIG.search(self.target)):
            self.busy = True
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._download(int(m.group(1)), rid))
            return
        elif self.method == b"PUT":
            self.send([("ETag", '"bench"'), ("x-amz-request-id", rid)], b"")
        else:
            self.send([("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-RequestId", rid)], b"{}")
        self.finish()

    def finish(self) -> None:
        if not self.keep_alive:
            self.transport.close()
            self.closing = True

    def _late(self, headers, payload) -> None:
        if not self.closing:
            self.send(headers, payload)
            self.finish()
        self.busy = False
        self.process()

    async def _download(self, size: int, rid: str) -> None:
        self.transport.write(response_head(200, [("Content-Type", "application/octet-stream"),
                                                 ("x-amz-request-id", rid)], size))
        left = size
        while left and not self.closing:
            n = min(left, len(CHUNK))
            self.transport.write(CHUNK if n == len(CHUNK) else CHUNK[:n])
            left -= n
            await self.can_write.wait()
        if self.closing:
            return
        self.finish()
        self.busy = False
        self.transport.resume_reading()
        self.process()


def make_tls(ca_out: Path) -> ssl.SSLContext:
    """A throwaway CA and a certificate for the AWS host names and 127.0.0.1; the CA goes to ca_out."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentgate bench upstream CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = ["*.amazonaws.com", "*.us-east-1.amazonaws.com", "*.s3.amazonaws.com", "*.s3.us-east-1.amazonaws.com",
             "localhost"]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "amazonaws.com")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([*(x509.DNSName(n) for n in names),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_out.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_alpn_protocols(["http/1.1"])
    with tempfile.TemporaryDirectory() as d:
        pem = Path(d) / "server.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        ctx.load_cert_chain(pem)
    return ctx


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls-port", type=int, default=None, help="also listen with TLS on this port (0: any)")
    ap.add_argument("--tls-ca-out", default=None, help="where to write the CA certificate of the TLS listener")
    ap.add_argument("--ready-file")
    ap.add_argument("--slow-sts", default="", help="AssumeRole for session names containing this answers late")
    ap.add_argument("--slow-sts-seconds", type=float, default=5.0)
    args = ap.parse_args()
    global SLOW_STS, SLOW_STS_SECONDS
    SLOW_STS, SLOW_STS_SECONDS = args.slow_sts, args.slow_sts_seconds
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(Server, "127.0.0.1", args.port)]
    ports = [servers[0].sockets[0].getsockname()[1]]
    if args.tls_port is not None:
        if not args.tls_ca_out:
            ap.error("--tls-port needs --tls-ca-out")
        ctx = make_tls(Path(args.tls_ca_out))
        servers.append(await loop.create_server(Server, "127.0.0.1", args.tls_port, ssl=ctx))
        ports.append(servers[1].sockets[0].getsockname()[1])
    line = " ".join(map(str, ports))
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(line)
        tmp.rename(args.ready_file)
    print(line, flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
