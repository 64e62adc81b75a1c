"""A fast stand-in for AWS for benchmarks (moto is slower than the gateway): answers on loopback
with canned responses. STS AssumeRole gets credentials (counted); PUT bodies are read and
discarded; GET /<bucket>/big-<N> streams N bytes; anything else gets a small JSON answer.

    python scripts/bench_upstream.py --port 0 --ready-file F   # writes the port to F
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import uuid

import h11

STS_RESPONSE = """<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
<Credentials><AccessKeyId>ASIABENCHBENCHBENCH1</AccessKeyId><SecretAccessKey>benchsecret</SecretAccessKey>
<SessionToken>benchtoken</SessionToken><Expiration>{exp}</Expiration></Credentials>
<AssumedRoleUser><AssumedRoleId>AROABENCH:{name}</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/agent-role/{name}</Arn></AssumedRoleUser>
</AssumeRoleResult><ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></AssumeRoleResponse>"""

BIG = re.compile(rb"/big-(\d+)")
CHUNK = b"\0" * (1 << 20)
STATS = {"sts_calls": 0, "requests": 0}
SLOW_STS = ""  # --slow-sts NAME: AssumeRole for session names containing NAME answers late
SLOW_STS_SECONDS = 5.0


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(1 << 20)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    return
                continue
            if isinstance(event, (h11.ConnectionClosed,)) or event is h11.PAUSED and conn.our_state is h11.MUST_CLOSE:
                return
            if isinstance(event, h11.Request):
                body = bytearray()
                keep = event.method != b"PUT"
                while True:
                    e = conn.next_event()
                    if e is h11.NEED_DATA:
                        data = await reader.read(1 << 20)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(e, h11.Data):
                        if keep and len(body) < 65536:
                            body += e.data
                    elif isinstance(e, h11.EndOfMessage):
                        break
                await respond(conn, writer, event, bytes(body))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
    except (h11.RemoteProtocolError, ConnectionError):
        return
    finally:
        writer.close()


async def respond(conn: h11.Connection, writer: asyncio.StreamWriter, req: h11.Request, body: bytes) -> None:
    STATS["requests"] += 1
    rid = str(uuid.uuid4())
    if b"Action=AssumeRole" in body:
        STATS["sts_calls"] += 1
        name = (re.search(rb"RoleSessionName=([^&]+)", body) or [b"", b"x"])[1].decode()
        if SLOW_STS and SLOW_STS in name:  # a fault to inject: STS hangs for this principal
            await asyncio.sleep(SLOW_STS_SECONDS)
        exp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        payload = STS_RESPONSE.format(exp=exp, name=name, rid=rid).encode()
        await send(conn, writer, 200, [("content-type", "text/xml"), ("x-amzn-requestid", rid)], payload)
    elif req.target.startswith(b"/__stats"):
        await send(conn, writer, 200, [("content-type", "application/json")], json.dumps(STATS).encode())
    elif req.method == b"GET" and (m := BIG.search(req.target)):
        size = int(m.group(1))
        writer.write(conn.send(h11.Response(status_code=200, headers=[
            ("content-length", str(size)), ("content-type", "application/octet-stream"), ("x-amz-request-id", rid)])))
        left = size
        while left:
            n = min(left, len(CHUNK))
            writer.write(conn.send(h11.Data(data=CHUNK[:n])))
            left -= n
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
    elif req.method == b"PUT":
        await send(conn, writer, 200, [("etag", '"bench"'), ("x-amz-request-id", rid)], b"")
    else:
        await send(conn, writer, 200, [("content-type", "application/x-amz-json-1.0"), ("x-amzn-requestid", rid)], b"{}")


async def send(conn, writer, status, headers, payload: bytes) -> None:
    writer.write(conn.send(h11.Response(status_code=status, headers=headers + [("content-length", str(len(payload)))])))
    writer.write(conn.send(h11.Data(data=payload)) if payload else b"")
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file")
    ap.add_argument("--slow-sts", default="", help="AssumeRole for session names containing this answers late")
    ap.add_argument("--slow-sts-seconds", type=float, default=5.0)
    args = ap.parse_args()
    global SLOW_STS, SLOW_STS_SECONDS
    SLOW_STS, SLOW_STS_SECONDS = args.slow_sts, args.slow_sts_seconds
    server = await asyncio.start_server(handle, "127.0.0.1", args.port, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write(str(port))
    print(port, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
