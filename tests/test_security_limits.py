"""Size caps through a real gateway (upstream moto, caps set small in agentgate.toml): a request head
over ``max_header_bytes``, a URL over ``max_url_bytes`` and a buffered body over ``max_body_bytes``
are refused with a 4xx naming the cap and how to raise it, and recorded; a head that never ends
and a CONNECT head over the cap are cut off; a streamed S3 upload larger than the body cap still
works, and a refused one is not buffered whole."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import ssl
import time

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.support.gateway import Gateway
from tests.support.raw import tunnel

MAX_HEADER, MAX_URL, MAX_BODY = 8192, 2048, 1 << 20


@pytest.fixture(scope="module")
def gw(tmp_path_factory, issuer, moto):
    g = Gateway(tmp_path_factory.mktemp("limits"), issuer=issuer.issuer, upstream=moto.url,
                aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key),
                settings={"max_header_bytes": MAX_HEADER, "max_url_bytes": MAX_URL, "max_body_bytes": MAX_BODY})
    with g:
        yield g
    print(g.log()[-3000:])


def client(gw, token: str, service: str, **config):
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                        verify=str(gw.ca_file),
                        config=botocore.config.Config(proxies={"https": gw.proxy_url(token)},
                                                      retries={"total_max_attempts": 1}, **config))


def last_record(gw, sub: str) -> dict:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [r for r in gw.records() if r["principal"] == sub]
        if found:
            time.sleep(0.2)
            found = [r for r in gw.records() if r["principal"] == sub]
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no record for {sub}")




def read_answer(sock) -> bytes:
    sock.settimeout(5)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    return data


def test_a_request_head_over_the_cap_is_refused_and_recorded(gw, issuer):
    sts = client(gw, issuer.mint("agent-big-head"), "sts")
    sts.meta.events.register("before-send", lambda request, **_: request.headers.__setitem__("X-Pad", "p" * MAX_HEADER))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        sts.get_caller_identity()
    err = e.value.response["Error"]
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 431
    assert err["Code"] == "RequestHeaderSectionTooLarge"
    assert f"max_header_bytes ({MAX_HEADER})" in err["Message"] and "AGENTGATE_MAX_HEADER_BYTES" in err["Message"]
    r = last_record(gw, "agent-big-head")
    assert (r["outcome"], r["rule"], r["status"]) == ("refused", "agentgate:egress", 431)
    assert client(gw, issuer.mint("agent-small-head"), "sts").get_caller_identity()["Account"] == "123456789012"


def test_a_url_over_the_cap_is_refused_and_recorded(gw, issuer):
    s3 = client(gw, issuer.mint("agent-long-url"), "s3")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="limits-bucket", Key="k" * (MAX_URL + 10))
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 414
    assert e.value.response["Error"]["Code"] == "RequestURITooLong"
    assert f"max_url_bytes ({MAX_URL})" in e.value.response["Error"]["Message"]
    r = last_record(gw, "agent-long-url")
    assert (r["outcome"], r["rule"], r["status"]) == ("refused", "agentgate:egress", 414)


def test_a_head_that_never_ends_is_cut_off(gw, issuer):
    tls = tunnel(gw, issuer.mint("agent-endless"), "sts.amazonaws.com")
    tls.sendall(b"POST / HTTP/1.1\r\nHost: sts.amazonaws.com\r\n")
    answer = b""
    try:
        for _ in range(64):  # 64 x 2 KiB header lines, never the blank line
            tls.sendall(b"X-Pad: " + b"p" * 2048 + b"\r\n")
    except (ConnectionError, ssl.SSLError):
        pass
    answer = read_answer(tls)
    tls.close()
    assert answer.startswith(b"HTTP/1.1 431") and b"max_header_bytes is 8192" in answer, answer[:300]
    assert b"<Code>RequestHeaderSectionTooLarge</Code>" in answer, answer[:600]  # AWS-shaped, though never parsed
    assert "the request head passed" in gw.log()
    r = last_record(gw, "agent-endless")  # no request was read, and the refusal is recorded all the same
    assert (r["outcome"], r["rule"], r["status"]) == ("refused", "agentgate:egress", 431), r
    assert r["error"].startswith("RequestHeaderSectionTooLarge: the request head passed"), r["error"]
    assert (r["method"], r["url"]) == ("POST", "https://sts.amazonaws.com/"), r
    assert "request head refused before it was read as a request" in r["body_note"] and r["request_body"] is None


def test_a_connect_head_over_the_cap_is_refused(gw, issuer):
    token = issuer.mint("agent-fat-connect", groups=[f"group-{i}-{secrets.token_hex(8)}" for i in range(400)])
    assert len(token) > MAX_HEADER
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        cred = base64.b64encode(f"agent:{token}".encode()).decode()
        s.sendall(f"CONNECT sts.amazonaws.com:443 HTTP/1.1\r\nProxy-Authorization: Basic {cred}\r\n\r\n".encode())
        answer = read_answer(s)
    assert answer.startswith(b"HTTP/1.1 431") and b"max_header_bytes (8192)" in answer, answer[:300]
    assert token.encode() not in answer


def _lambda_invoke_head(size: int, chunked: bool = False) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    return (f"POST /2015-03-31/functions/f/invocations HTTP/1.1\r\nHost: lambda.us-east-1.amazonaws.com\r\n"
            "X-Amz-Date: 20260101T000000Z\r\nContent-Type: application/json\r\n"
            "Authorization: AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/lambda/aws4_request, "
            f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}\r\n{framing}\r\n\r\n").encode()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_buffered_body_over_the_cap_is_refused_and_recorded(gw, issuer, chunked):
    sub = f"agent-big-body-{'chunked' if chunked else 'length'}"
    tls = tunnel(gw, issuer.mint(sub), "lambda.us-east-1.amazonaws.com")
    size = 32 * MAX_BODY  # more than socket buffers hold: all of it is sent only if the gateway reads it
    tls.sendall(_lambda_invoke_head(size, chunked))
    sent = 0
    try:
        while sent < size:
            piece = b"x" * 65536
            tls.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
    except (ConnectionError, ssl.SSLError):
        pass
    answer = read_answer(tls)
    tls.close()
    assert sent < size, "the gateway read the whole body"
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"max_body_bytes (1048576)" in answer
    assert b'"__type": "RequestEntityTooLarge"' in answer  # AWS-shaped in Lambda's protocol (rest-json)
    r = last_record(gw, sub)
    assert (r["outcome"], r["rule"], r["status"]) == ("refused", "agentgate:egress", 413)
    assert "max_body_bytes" in r["error"] and (f"declares {size} bytes" in r["error"]) == (not chunked)


def test_a_buffered_body_over_the_cap_from_an_http2_agent_is_refused_and_recorded(gw, issuer):
    """The same over HTTP/2 (where a body has no chunked framing and Content-Length is optional):
    413, AWS-shaped on the agent's stream, and recorded."""
    from tests.support.raw import h2_request

    sub = "agent-big-body-h2"
    size = 4 * MAX_BODY
    status, headers, answer = h2_request(gw, issuer.mint(sub), "lambda.us-east-1.amazonaws.com", "POST",
                                         b"/2015-03-31/functions/f/invocations", {
                                             "X-Amz-Date": "20260101T000000Z", "Content-Type": "application/json",
                                             "Authorization": "AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/"
                                                              "lambda/aws4_request, SignedHeaders=host;x-amz-date, "
                                                              f"Signature={'0' * 64}"}, b"x" * size)
    assert status == 413 and b'"__type": "RequestEntityTooLarge"' in answer, (status, answer[:300])
    assert b"max_body_bytes (1048576)" in answer
    r = last_record(gw, sub)
    assert (r["outcome"], r["rule"], r["status"]) == ("refused", "agentgate:egress", 413)
    assert "max_body_bytes" in r["error"]


def test_an_http2_head_over_the_cap_is_refused_on_its_stream_and_the_connection_goes_on(gw, issuer):
    """HTTP/2 headers over max_header_bytes get the 431 an HTTP/1 head gets, on their own stream,
    up to 64 KiB past the cap: mitmproxy's h2 layer took no header block over 64 KiB (h2's
    default), and ended the connection with GOAWAY for it, the agent's other calls on it too,
    whatever max_header_bytes said. Past that slack, the connection still ends (as an HTTP/1
    head that never ends does), and the attempt is recorded."""
    from tests.support.raw import Http2ConnectionTerminated, h2_calls

    sub = "agent-big-head-h2"
    body = b"Action=GetCallerIdentity&Version=2011-06-15"
    head = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "X-Amz-Date": "20260101T000000Z",
            "Authorization": "AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/sts/aws4_request, "
                             "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64}
    pad = 70 * 1024  # over h2's default 64 KiB, under max_header_bytes + 64 KiB
    [(status, _, answer), (status2, _, answer2)] = h2_calls(gw, issuer.mint(sub), "sts.amazonaws.com", [
        ("POST", b"/", {**head, "X-Pad": "p" * pad}, body, ()),
        ("POST", b"/", head, body, ()),
    ])
    assert status == 431 and b"<Code>RequestHeaderSectionTooLarge</Code>" in answer, (status, answer[:400])
    assert f"max_header_bytes ({MAX_HEADER})".encode() in answer, answer[:400]
    assert status2 == 200 and b":assumed-role/agent-role/" in answer2, answer2[:400]
    time.sleep(0.3)
    mine = [r for r in gw.records() if r["principal"] == sub]
    assert [(r["outcome"], r["status"]) for r in mine] == [("refused", 431), ("forwarded", 200)], mine
    assert mine[0]["rule"] == "agentgate:egress" and "max_header_bytes" in mine[0]["error"], mine[0]

    sub = "agent-huge-head-h2"
    with pytest.raises(Http2ConnectionTerminated):
        h2_calls(gw, issuer.mint(sub), "sts.amazonaws.com", [
            ("POST", b"/", {**head, "X-Pad": "p" * (MAX_HEADER + 65 * 1024)}, body, ())])
    r = last_record(gw, sub)
    assert (r["outcome"], r["rule"], r["status"]) == ("refused", "agentgate:egress", 400), r
    assert "header block" in r["error"], r["error"]


def test_a_streamed_upload_larger_than_the_body_cap_works(gw, issuer):
    """S3 bodies with a declared payload hash stream through, never buffered: the cap does not apply,
    in aws-chunked framing (boto3's default) or with Content-Length and the real SHA-256."""
    s3 = client(gw, issuer.mint("agent-uploader"), "s3")
    s3.create_bucket(Bucket="limits-uploads")
    data = secrets.token_bytes(3 * MAX_BODY)
    s3.put_object(Bucket="limits-uploads", Key="big.bin", Body=data)
    assert s3.get_object(Bucket="limits-uploads", Key="big.bin")["Body"].read() == data
    sized = client(gw, issuer.mint("agent-uploader"), "s3", request_checksum_calculation="when_required")
    sized.put_object(Bucket="limits-uploads", Key="sized.bin", Body=data)
    assert s3.head_object(Bucket="limits-uploads", Key="sized.bin")["ContentLength"] == len(data)


def test_a_refused_streamed_upload_is_not_buffered_whole(gw, issuer):
    """A principal with no role is refused before its upload goes anywhere; the body it keeps
    sending is not held beyond the cap. The SDK, still sending when the connection closes, reports
    a connection error rather than the answer; the record says what happened."""
    sub = "agent-without-a-role"
    s3 = client(gw, issuer.mint(sub, groups=["nobody"]), "s3")
    with pytest.raises((botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)) as e:
        s3.put_object(Bucket="limits-uploads", Key="refused.bin", Body=secrets.token_bytes(32 * MAX_BODY))
    if isinstance(e.value, botocore.exceptions.ClientError):
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
        assert e.value.response["Error"]["Code"] == "RequestEntityTooLarge"
    r = last_record(gw, sub)
    assert (r["outcome"], r["rule"], r["status"]) == ("refused", "agentgate:egress", 413)
    assert "max_body_bytes" in r["error"] and "it had been refused already: no role" in r["error"], r["error"]
    assert r["url"].endswith("/refused.bin")


def test_the_body_of_a_request_refused_at_its_head_is_not_held(tmp_path, issuer, moto):
    """A request refused before its body came (here: no token in a tunnel opened without one, so
    anyone who can reach the port can send it) has its body read and dropped, not held: mitmproxy
    held all of it until it ended (up to max_body_bytes a stream, 100 streams a connection), so
    unauthenticated clients could fill the gateway's memory. The record keeps its SHA-256 and size."""
    import hashlib

    body = secrets.token_bytes(48 << 20)
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as g:
        time.sleep(1)
        before = _peak_rss_mb(g.proc.pid)
        tls = tunnel(g, None, "dynamodb.us-east-1.amazonaws.com")
        head = (b"POST / HTTP/1.1\r\nHost: dynamodb.us-east-1.amazonaws.com\r\nX-Amz-Target: DynamoDB_20120810.ListTables\r\n"
                b"Content-Type: application/x-amz-json-1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
        tls.sendall(head)
        for i in range(0, len(body), 1 << 20):
            part = body[i:i + (1 << 20)]
            tls.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        tls.sendall(b"0\r\n\r\n")
        answer = read_answer(tls)
        tls.close()
        assert answer.startswith(b"HTTP/1.1 403") and b"no token" in answer, answer[:300]
        grew = _peak_rss_mb(g.proc.pid) - before
        assert grew < 24, f"the gateway's peak memory grew by {grew:.0f} MB for a refused 48 MB body"
        [r] = [r for r in g.records() if r["rule"] == "agentgate:auth"]
        assert (r["request_body_size"], r["request_body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
        assert r["request_body"] is None


def test_a_json_call_whose_target_names_no_operation_is_refused_by_its_head(gw, issuer):
    """X-Amz-Target decides a json call's operation whatever its body holds: one that names no
    operation is refused from its head, and its body dropped as it comes, not held (four 90 MB
    bodies of such a call took the gateway's memory up by 600 MB)."""
    import hashlib

    sub = "agent-bogus-target"
    body = b'{"x": "' + b"y" * 800_000 + b'"}'
    tls = tunnel(gw, issuer.mint(sub), "dynamodb.us-east-1.amazonaws.com")
    head = (b"POST / HTTP/1.1\r\nHost: dynamodb.us-east-1.amazonaws.com\r\nX-Amz-Target: DynamoDB_20120810.Bogus\r\n"
            b"Content-Type: application/x-amz-json-1.0\r\nX-Amz-Date: 20260101T000000Z\r\n"
            b"Authorization: AWS4-HMAC-SHA256 Credential=agentgate/20260101/us-east-1/dynamodb/aws4_request, "
            b"SignedHeaders=host;x-amz-date, Signature=" + b"0" * 64 + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    tls.sendall(head + body)
    answer = read_answer(tls)
    tls.close()
    assert answer.startswith(b"HTTP/1.1 403") and b"names no operation" in answer, answer[:400]
    r = last_record(gw, sub)
    assert (r["rule"], r["outcome"], r["request_body"]) == ("agentgate:classify", "refused", None), r
    assert (r["request_body_size"], r["request_body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())


def test_parameters_too_large_to_keep_are_recorded_as_their_digest(tmp_path, issuer, moto):
    """A form of tens of thousands of list items is decided on whole (policy and an approval's
    binding read every item), classified off the event loop, and recorded as its parameters'
    SHA-256 and size once their JSON passes body_cap: the store does not take megabytes a call."""
    ids = [f"i-{n:017x}" for n in range(20_000)]
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url, settings={"body_cap": 64 * 1024},
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as g:
        ec2 = client(g, issuer.mint("agent-many-ids"), "ec2")
        with pytest.raises(botocore.exceptions.ClientError):
            ec2.describe_instances(InstanceIds=ids)  # moto knows none of them
        [r] = [r for r in g.records() if r["principal"] == "agent-many-ids"]
        params = json.loads(r["params"]) if isinstance(r["params"], str) else r["params"]
        assert set(params) == {"agentgate:not-kept", "sha256", "size"}, str(params)[:300]
        assert params["size"] > 64 * 1024 and "over body_cap (65536)" in params["agentgate:not-kept"]
        assert r["truncated"] and r["action"] == "ec2:DescribeInstances" and r["decision"] == "allow"


def test_an_http2_agent_reading_a_download_slowly_does_not_make_the_gateway_hold_it(gw, issuer):
    """An HTTP/2 agent takes an answer as fast as it opens its flow-control window. One that stops
    reading a download (here stream 1: its window is never opened past the first 64 KiB) while it
    reads another on the same connection (stream 3) whole: upstream is read for stream 1 no faster
    than the agent takes it, so the gateway does not hold that object in memory (it held it whole,
    48 MB here, and a few such downloads took the gateway out of memory), stream 3 is not held up
    by it, and once the agent reads stream 1 again it gets it whole."""
    import h2.events

    from tests.support.raw import _h2_connection, _h2_head, s3_signed

    sub = "agent-reading-slowly-h2"
    data = secrets.token_bytes(1 << 20) * 48
    s3 = client(gw, issuer.mint(sub), "s3")
    s3.create_bucket(Bucket="limits-h2-slow")
    s3.put_object(Bucket="limits-h2-slow", Key="big.bin", Body=data)
    host = "limits-h2-slow.s3.amazonaws.com"
    tls, conn = _h2_connection(gw, issuer.mint(sub), host)
    try:
        time.sleep(0.5)
        before = _rss_mb(gw.proc.pid)
        for stream in (1, 3):
            conn.send_headers(stream, _h2_head(host, "GET", b"/big.bin", s3_signed("GET", f"https://{host}/big.bin")),
                              end_stream=True)
        tls.sendall(conn.data_to_send())
        got, ended, grew = {1: bytearray(), 3: bytearray()}, set(), None  # bytes += would copy 48 MB per frame
        tls.settimeout(30)
        while ended != {1, 3}:
            data_in = tls.recv(1 << 20)
            assert data_in, "the gateway closed the connection"
            for event in conn.receive_data(data_in):
                if isinstance(event, h2.events.DataReceived):
                    got[event.stream_id] += event.data
                    if event.stream_id == 3 or grew is not None:
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    else:  # the connection's window only: stream 1 stays stalled
                        conn.increment_flow_control_window(event.flow_controlled_length)
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
                elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise AssertionError(f"the gateway ended the download: {event}")
            if 3 in ended and grew is None:  # stream 3 whole while stream 1 waits: how much does the gateway hold?
                time.sleep(1.0)
                grew = _rss_mb(gw.proc.pid) - before
                assert len(got[1]) < len(data) // 4, len(got[1])
                conn.acknowledge_received_data(len(got[1]), 1)  # stream 1 is read again from here
            tls.sendall(conn.data_to_send())
    finally:
        tls.close()
    assert got[3] == data and got[1] == data, (len(got[1]), len(got[3]))
    assert grew < 24, f"the gateway's memory grew by {grew:.0f} MB while an agent did not read a 48 MB download"
    gets = [r for r in gw.records() if r["principal"] == sub and r["operation"] == "GetObject"]
    assert [(r["outcome"], r["status"]) for r in gets] == [("forwarded", 200)] * 2, gets


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip"])
def test_an_object_stored_compressed_reaches_the_agent_as_stored_without_being_inflated(gw, issuer, encoding):
    """An S3 object stored with a Content-Encoding is a body the gateway masks for the record: a
    compression bomb (under 1 MB as stored, 512 MB of JSON whitespace inflated) reaches the agent byte for
    byte as stored, its record keeps its SHA-256 and size, and the gateway's memory does not
    inflate it whole."""
    import hashlib

    from tests.support.bombs import bomb as compressed

    bomb = compressed(encoding)
    assert len(bomb) < MAX_BODY
    sub = f"agent-reading-a-{encoding}-object"
    s3 = client(gw, issuer.mint(sub), "s3")
    s3.create_bucket(Bucket=f"limits-{encoding}")
    s3.put_object(Bucket=f"limits-{encoding}", Key="bomb.json", Body=bomb, ContentEncoding=encoding,
                  ContentType="application/json")
    before = _peak_rss_mb(gw.proc.pid)
    got = s3.get_object(Bucket=f"limits-{encoding}", Key="bomb.json")
    assert got["ContentEncoding"] == encoding
    assert got["Body"].read() == bomb
    assert _peak_rss_mb(gw.proc.pid) < before + 128, (before, _peak_rss_mb(gw.proc.pid))
    deadline = time.monotonic() + 5
    while not (found := [r for r in gw.records() if r["principal"] == sub and r["operation"] == "GetObject"]):
        assert time.monotonic() < deadline, "no record of the GetObject"
        time.sleep(0.1)
    r = found[0]
    assert (r["outcome"], r["status"]) == ("forwarded", 200)
    assert (r["response_body_sha256"], r["response_body_size"]) == (hashlib.sha256(bomb).hexdigest(), len(bomb))
    assert r["response_body"] is None
