"""A canned stand-in for AWS on loopback that misbehaves on cue, for tests of what the gateway
records when a call does not simply succeed.

STS AssumeRole gets credentials (the gateway's JIT credentials); the last path segment of any other
request picks the answer:

    slow-<S>    waits S seconds, then answers 200
    big-<N>     streams N bytes (application/octet-stream)
    drop-<x>    closes the connection without answering
    (Upgrade: websocket)  101 Switching Protocols, then one text frame ("hello from upstream");
                the bytes that follow on the connection are kept in ``upgraded``
    echo-credentials  403 SignatureDoesNotMatch quoting the key id and session token it was signed with
    xml-<N>     about N bytes of XML, chunked (no Content-Length)
    anything    200 with a small body (JSON for X-Amz-Target calls, XML otherwise)

A JSON call whose X-Amz-Target is a key of ``answers`` gets that answer: (status, Content-Type,
body). A JSON call (X-Amz-Target) whose body names ``"TableName": "items-<N>"`` (or ``"chunked-items-<N>"``)
gets a DynamoDB Scan answer of about N bytes, each item with an ``ssn`` (``canned-ssn-<i>``), with a
Content-Length (or chunked).

    with CannedUpstream() as up:
        Gateway(..., upstream=up.url)
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import json
import re
import secrets
import threading
import time
import uuid
import zlib

CHUNK = b"\0" * (1 << 16)


class CannedUpstream:
    def __init__(self) -> None:
        self.access_key = "ASIACANNEDUPSTREAM01"
        self.secret_key = f"canned-secret-{secrets.token_hex(8)}"
        self.session_token = f"canned-session-token-{secrets.token_hex(8)}"
        self.cookie = f"upstream-cookie={secrets.token_hex(8)}"  # set on every small answer
        self.requests: list[tuple[str, str, list[tuple[str, str]]]] = []  # (method, path, headers) of each
        self.request_ids: list[str] = []  # the x-amzn-requestid of each answer sent
        self.encoded: dict[str, tuple[str, bytes]] = {}  # object key -> (Content-Encoding, body as sent)
        self.answers: dict[str, tuple[int, str, bytes]] = {}  # X-Amz-Target -> (status, Content-Type, body)
        self.upgraded: list[bytes] = []  # what each connection switched to WebSocket carried after its handshake
        upstream = self

        class Handler(_Handler):
            owner = upstream

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "CannedUpstream":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: CannedUpstream

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        rid = str(uuid.uuid4())
        self.owner.request_ids.append(rid)
        self.send_header("set-cookie", self.owner.cookie)
        self.send_header("x-amzn-requestid", rid)
        self.send_header("x-amz-request-id", rid)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_chunked(self, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(200)
        self.send_header("content-type", ctype)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("transfer-encoding", "chunked")
        rid = str(uuid.uuid4())
        self.owner.request_ids.append(rid)
        self.send_header("x-amzn-requestid", rid)
        self.end_headers()
        for i in range(0, len(body), 1 << 16):
            piece = body[i:i + (1 << 16)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        up = self.owner
        up.requests.append((self.command, self.path, list(self.headers.items())))
        name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
        try:
            if self.headers.get("upgrade", "").lower() == "websocket":
                self._websocket()
            elif b"Action=AssumeRole" in body:
                session = (re.search(rb"RoleSessionName=([^&]+)", body) or [b"", b"agent"])[1].decode()
                exp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
                self._send(200, _STS.format(key=up.access_key, secret=up.secret_key, token=up.session_token, exp=exp,
                                            session=session, rid=uuid.uuid4()).encode(), "text/xml")
            elif name.startswith("slow-"):
                time.sleep(float(name[5:]))
                self._send(200, b"slow answer", "text/plain")
            elif name.startswith("big-"):
                size = int(name[4:])
                self.send_response(200)
                self.send_header("content-type", "application/octet-stream")
                self.send_header("content-length", str(size))
                self.end_headers()
                while size:
                    n = min(size, len(CHUNK))
                    self.wfile.write(CHUNK[:n])
                    size -= n
            elif name in self.owner.encoded:  # a body as sent with its Content-Encoding: (encoding, bytes)
                encoding, data = self.owner.encoded[name]
                self._send(200, data, "application/json", {"content-encoding": encoding})
            elif self.headers.get("x-amz-target") in up.answers:
                status, ctype, answer = up.answers[self.headers["x-amz-target"]]
                self._send(status, answer, ctype)
            elif name.startswith("xml-"):
                self._send_chunked(b"<ListBucketResult>" + b"<Key>canned</Key>" * (int(name[4:]) // 17)
                                   + b"</ListBucketResult>", "application/xml")
            elif (m := re.search(rb'"TableName": *"(chunked-)?items-(\d+)"', body)) and self.headers.get("x-amz-target"):
                items = [{"k": {"S": str(i)}, "ssn": {"S": f"canned-ssn-{i}"}, "pad": {"S": "p" * 900}}
                         for i in range(int(m[2]) // 1000 + 1)]
                answer = json.dumps({"Items": items, "Count": len(items), "ScannedCount": len(items)}).encode()
                crc = {"x-amz-crc32": str(zlib.crc32(answer))}  # as DynamoDB sends it
                if m[1]:
                    self._send_chunked(answer, "application/x-amz-json-1.0", crc)
                else:
                    self._send(200, answer, "application/x-amz-json-1.0", crc)
            elif name.startswith("echo-credentials"):  # as S3's SignatureDoesNotMatch quotes what it was sent
                key = (re.search(r"Credential=([^/]+)/", self.headers.get("authorization", "")) or [None, ""])[1]
                token = self.headers.get("x-amz-security-token", "")
                canonical = f"GET\n/{name}\n\nx-amz-security-token:{token}\n"
                self._send(403, (f"<Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>{key}</AWSAccessKeyId>"
                                 f"<CanonicalRequest>{canonical}</CanonicalRequest><CanonicalRequestBytes>"
                                 f"{' '.join(f'{b:02x}' for b in canonical.encode())}</CanonicalRequestBytes>"
                                 "</Error>").encode(), "application/xml")
            elif name.startswith("drop-"):
                self.close_connection = True  # no answer at all
            elif self.headers.get("x-amz-target"):
                self._send(200, b'{"TableNames": []}', "application/x-amz-json-1.0")
            else:
                self._send(200, b"<ok/>", "application/xml")
        except (BrokenPipeError, ConnectionResetError):  # the gateway (or its agent) went away
            self.close_connection = True

    def _websocket(self) -> None:
        """Switch to WebSocket (RFC 6455), send one text frame, keep what arrives for a moment."""
        key = self.headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", accept.decode())
        self.end_headers()
        text = b"hello from upstream"
        self.wfile.write(bytes([0x81, len(text)]) + text)
        self.wfile.flush()
        self.connection.settimeout(2)
        received = b""
        try:
            while chunk := self.connection.recv(65536):
                received += chunk
        except OSError:
            pass
        self.owner.upgraded.append(received)
        self.close_connection = True


_STS = """<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
<Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>
<SessionToken>{token}</SessionToken><Expiration>{exp}</Expiration></Credentials>
<AssumedRoleUser><AssumedRoleId>AROACANNED:{session}</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/agent-role/{session}</Arn></AssumedRoleUser>
</AssumeRoleResult><ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></AssumeRoleResponse>"""
