"""Replay: a session recorded through a real gateway against moto is replayed against moto with
fresh JIT credentials; reads come back as recorded, denied calls are never sent, writes only with
--allow-writes, and requests whose bodies cannot be rebuilt (or had values masked) are skipped with
the reason. Unit tests cover the choice of calls, rebuilding bodies from parameters, and the diff."""

from __future__ import annotations

import json

import botocore.exceptions
import pytest

from addons.core import replay as rp
from addons.core.credentials import session_name
from tests.test_identity_e2e import client

PRINCIPAL = "replay-agent"


@pytest.fixture(scope="module")
def session(gateway, issuer):
    """A recorded session: S3 and DynamoDB reads and writes, STS, and a denied IAM call."""
    token = issuer.mint(PRINCIPAL)
    s3 = client(gateway, "s3", proxy_token=token)
    s3.create_bucket(Bucket="replay-bucket")
    s3.put_object(Bucket="replay-bucket", Key="greeting.txt", Body=b"hello, replay")
    assert s3.get_object(Bucket="replay-bucket", Key="greeting.txt")["Body"].read() == b"hello, replay"
    s3.list_objects_v2(Bucket="replay-bucket")
    ddb = client(gateway, "dynamodb", proxy_token=token)
    ddb.create_table(TableName="replay-table", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName="replay-table", Item={"pk": {"S": "a"}, "n": {"N": "1"}, "b": {"B": b"\x00\x01"}})
    assert ddb.get_item(TableName="replay-table", Key={"pk": {"S": "a"}})["Item"]["n"] == {"N": "1"}
    client(gateway, "sts", proxy_token=token).get_caller_identity()
    with pytest.raises(botocore.exceptions.ClientError):
        client(gateway, "iam", proxy_token=token).list_users()
    calls = json.loads(gateway.cli("calls", "list", "--principal", PRINCIPAL, "--json", "--limit", "100").stdout)
    calls.reverse()
    assert [c["operation"] for c in calls] == ["CreateBucket", "PutObject", "GetObject", "ListObjectsV2", "CreateTable",
                                               "PutItem", "GetItem", "GetCallerIdentity", "ListUsers"]
    sessions = {c["session_id"] for c in calls if c["decision"] == "allow"}
    assert len(sessions) == 1
    return {"id": sessions.pop(), "calls": {c["operation"]: c for c in calls}}


def replay(gateway, *args: str, check: bool = True):
    return gateway.cli("replay", *args, check=check, timeout=120)


def by_action(results: list[dict]) -> dict[str, dict]:
    return {r["action"]: r for r in results}


def test_replays_reads_and_skips_writes(gateway, moto, session):
    out = replay(gateway, session["id"], "--to", moto.url, "--json")
    results = by_action(json.loads(out.stdout))
    for action in ("s3:GetObject", "s3:ListBucket", "dynamodb:GetItem", "sts:GetCallerIdentity"):
        r = results[action]
        assert r["skipped"] is None and r["error"] is None, r
        assert r["status"] == r["recorded_status"] == 200, r
    for action in ("s3:ListBucket", "dynamodb:GetItem"):
        assert all(c["volatile"] for c in results[action]["diff"]), results[action]["diff"]
    # the replay runs as its own role session, named for the principal it replays
    arn = next(c for c in results["sts:GetCallerIdentity"]["diff"] if c["path"].endswith(".Arn"))
    # (replay:<principal>: not a name AWS takes as it is, so with a digest, and never a principal's own name)
    assert arn["old"].endswith(f"/{PRINCIPAL}")
    assert arn["new"].endswith("/" + session_name("agentgate:replay", f"replay:{PRINCIPAL}"))
    assert f"/replay-{PRINCIPAL}-" in arn["new"]
    assert results["s3:GetObject"]["result"] == "same"  # the object's bytes hash as recorded
    assert results["dynamodb:GetItem"]["result"] == "same"
    for action in ("s3:CreateBucket", "s3:PutObject", "dynamodb:CreateTable", "dynamodb:PutItem"):
        assert "--allow-writes" in results[action]["skipped"], results[action]
    assert "iam:ListUsers" not in results  # a denied call has no JIT session: it is not in the session


def test_a_denied_call_is_never_replayed(gateway, moto, session):
    denied, read = session["calls"]["ListUsers"], session["calls"]["GetItem"]
    out = replay(gateway, "--calls", f"{denied['id']},{read['id']}", "--to", moto.url, "--allow-writes", "--json")
    results = by_action(json.loads(out.stdout))
    assert "denied" in results["iam:ListUsers"]["skipped"] and "never replayed" in results["iam:ListUsers"]["skipped"]
    assert results["iam:ListUsers"]["status"] is None
    assert results["dynamodb:GetItem"]["status"] == 200


def test_writes_with_allow_writes(gateway, moto, session):
    out = replay(gateway, session["id"], "--to", moto.url, "--allow-writes", "--json")
    results = by_action(json.loads(out.stdout))
    put = results["dynamodb:PutItem"]
    assert put["status"] == 200 and put["result"] == "same", put
    create = results["dynamodb:CreateTable"]
    assert create["recorded_status"] == 200 and create["status"] == 400 and create["result"] == "status differs"
    assert any(c["path"] == "__type" for c in create["diff"]), create["diff"]  # the table exists now
    assert "streamed and not kept" in results["s3:PutObject"]["skipped"] or "not kept" in results["s3:PutObject"]["skipped"]
    assert results["s3:CreateBucket"]["status"] in (200, 409)


def test_dry_run_prints_what_would_be_sent(gateway, moto, session):
    p = replay(gateway, session["id"], "--to", moto.url, "--dry-run")
    out = p.stdout
    n = sum(1 for line in out.splitlines() if line.startswith("send "))
    total = n + sum(1 for line in out.splitlines() if line.startswith("skip "))
    assert p.stderr.startswith(f"dry run: {n} of {total} calls would be sent to {moto.url}\n")
    # with neither --to nor an upstream setting, the calls would go to AWS itself: said so
    p = gateway.cli("replay", session["id"], "--dry-run", env={"AGENTGATE_UPSTREAM": ""})
    assert p.stderr.startswith(f"dry run: {n} of {total} calls would be sent to AWS (the recorded hosts) (give "
                               "--to URL, or set upstream, for a sandbox)")
    get = session["calls"]["GetItem"]
    assert f"send  {get['id']}  dynamodb:GetItem: POST {moto.url}/  (Host: dynamodb.us-east-1.amazonaws.com" in out
    assert "X-Amz-Target: DynamoDB_20120810.GetItem" in out
    assert f"skip  {session['calls']['PutItem']['id']}  dynamodb:PutItem: a Write call" in out
    assert "Authorization" not in out


def test_human_output_and_diff(gateway, moto, session):
    out = replay(gateway, session["id"], "--to", moto.url, "--allow-writes", "--diff").stdout
    assert "recorded" in out and "now" in out and "status differs" in out
    create = session["calls"]["CreateTable"]
    assert f"{create['id']} dynamodb:CreateTable: 200 -> 400" in out
    assert "- TableDescription" in out and "+ __type" in out


def test_bad_input(gateway, moto, session):
    for args, words in ((["--to", moto.url], "give a SESSION, --calls IDS or --principal SUB"),
                        ([session["id"], "--calls", "x", "--to", moto.url], "one of them"),
                        ([session["id"], "--principal", PRINCIPAL, "--to", moto.url], "one of them"),
                        ([session["id"], "--since", "1h", "--to", moto.url], "give --principal SUB with them"),
                        (["--principal", PRINCIPAL, "--since", "tomorrow"], "--since"),
                        (["--principal", PRINCIPAL, "--since", "1h", "--until", "2h"], "is not before --until"),
                        ([session["id"], "--to", "ftp://x"], "--to must be")):
        p = replay(gateway, *args, check=False)
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = replay(gateway, "no-such-session", "--to", moto.url, check=False)
    assert p.returncode == 1 and "no session 'no-such-session'" in p.stderr
    p = replay(gateway, "--principal", "nobody-at-all", "--to", moto.url, check=False)
    assert p.returncode == 1 and "no forwarded call by principal 'nobody-at-all'" in p.stderr


def test_a_target_url_that_cannot_be_used_is_refused_before_anything_is_sent(gateway, session):
    """`--to 'http://[::1'` printed "replaying ... against http://[::1 ..." and then a ValueError
    traceback; a port that is no number (or out of range) was taken. Each is one line, exit 2, and
    nothing is said to be sent."""
    for target, words in (("http://[::1", "--to must be an http:// or https:// URL with a host"),
                          ("http://127.0.0.1:notaport", "--to must be an http:// or https:// URL with a host"),
                          ("http://127.0.0.1:99999",
                           "(and a port from 1 to 65535, if any), not 'http://127.0.0.1:99999'"),
                          ("http://127.0.0.1:5000/x", "--to must be an endpoint's URL, scheme, host and port only")):
        for dry_run in ([], ["--dry-run"]):
            p = replay(gateway, session["id"], "--to", target, *dry_run, check=False)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 2 and len(lines) == 1 and words in lines[0], (target, p.stderr)
            assert p.stdout == "" and "Traceback" not in p.stderr


def test_a_principals_calls_are_replayed_oldest_first_over_a_period(gateway, moto, session):
    """--principal SUB: the principal's forwarded calls, whichever session and gateway process
    recorded them, oldest first (a denied call was not forwarded: not among them); --since and
    --until cut them to a period."""
    out = replay(gateway, "--principal", PRINCIPAL, "--to", moto.url, "--json")
    results = json.loads(out.stdout)
    calls = session["calls"]
    forwarded = [c for c in sorted(calls.values(), key=lambda c: (c["time"], c["id"])) if c["decision"] == "allow"]
    assert [r["id"] for r in results] == [c["id"] for c in forwarded]
    assert "iam:ListUsers" not in {r["action"] for r in results}
    assert by_action(results)["dynamodb:GetItem"]["result"] == "same"
    assert "--allow-writes" in by_action(results)["dynamodb:PutItem"]["skipped"]
    # from the GetItem on: it and the GetCallerIdentity after it
    since = calls["GetItem"]["time"]
    out = replay(gateway, "--principal", PRINCIPAL, "--since", since, "--to", moto.url, "--json")
    assert [r["action"] for r in json.loads(out.stdout)] == ["dynamodb:GetItem", "sts:GetCallerIdentity"]
    # before the GetItem: the calls up to the PutItem
    out = replay(gateway, "--principal", PRINCIPAL, "--until", since, "--to", moto.url, "--dry-run", "--json")
    assert [r["action"] for r in json.loads(out.stdout)] == [
        "s3:CreateBucket", "s3:PutObject", "s3:GetObject", "s3:ListBucket", "dynamodb:CreateTable", "dynamodb:PutItem"]


def test_each_change_the_diff_shows_is_one_line(gateway, issuer, moto):
    """A value an agent wrote with a line break in it prints written out in --diff, so that it
    cannot print a line that reads as a change of its own."""
    ddb = client(gateway, "dynamodb", proxy_token=issuer.mint(PRINCIPAL))
    ddb.create_table(TableName="replay-lines", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName="replay-lines", Item={"pk": {"S": "a"}, "v": {"S": "old\n  ~ Item.role.S: reader -> admin"}})
    ddb.get_item(TableName="replay-lines", Key={"pk": {"S": "a"}})
    ddb.put_item(TableName="replay-lines", Item={"pk": {"S": "a"}, "v": {"S": "new"}})
    get = json.loads(gateway.cli("calls", "list", "--principal", PRINCIPAL, "--action", "dynamodb:GetItem", "--json",
                                 "--limit", "1").stdout)[0]
    out = replay(gateway, "--calls", get["id"], "--to", moto.url, "--diff").stdout
    changes = [line for line in out.splitlines() if line.startswith("  ")]
    assert changes == ["  ~ Item.v.S: old\\n  ~ Item.role.S: reader -> admin -> new"], out


@pytest.fixture(scope="module")
def capped_gateway(tmp_path_factory, issuer, moto):
    """A gateway that keeps no more than 300 bytes of a body in a record (body_cap)."""
    from tests.support.gateway import Gateway

    gw = Gateway(tmp_path_factory.mktemp("capped"), issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key), settings={"body_cap": 300})
    with gw:
        yield gw
    print(gw.log()[-3000:])


def test_an_answer_the_record_keeps_cut_at_body_cap_is_compared_as_it_was_sent(capped_gateway, issuer, moto):
    """A record keeps the first body_cap bytes of a longer answer, which parse as neither JSON nor
    XML: the same answer again is `same` (its SHA-256 is the recorded one), not a structure that
    differs; a changed one is `values differ`, naming where the two part within what was kept."""
    gw = capped_gateway
    token = issuer.mint(PRINCIPAL)
    ddb = client(gw, "dynamodb", proxy_token=token)
    ddb.create_table(TableName="replay-capped", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName="replay-capped", Item={"pk": {"S": "a"}, "note": {"S": "first " + "x" * 400}})
    ddb.get_item(TableName="replay-capped", Key={"pk": {"S": "a"}})
    s3 = client(gw, "s3", proxy_token=token)
    s3.create_bucket(Bucket="replay-capped")
    for i in range(5):
        s3.put_object(Bucket="replay-capped", Key=f"object-{i:02d}.txt", Body=b"x")
    s3.list_objects_v2(Bucket="replay-capped")
    calls = json.loads(gw.cli("calls", "list", "--principal", PRINCIPAL, "--json").stdout)
    reads = {c["action"]: c for c in calls if c["action"] in ("dynamodb:GetItem", "s3:ListBucket")}
    for c in reads.values():
        assert c["truncated"] and len(c["response_body"].encode()) <= 300 < c["response_body_size"], c
    ids = ",".join(c["id"] for c in reads.values())
    results = by_action(json.loads(replay(gw, "--calls", ids, "--to", moto.url, "--json").stdout))
    for action in reads:
        r = results[action]
        assert (r["status"], r["result"], r["diff"]) == (200, "same", []), r

    ddb.put_item(TableName="replay-capped", Item={"pk": {"S": "a"}, "note": {"S": "second " + "x" * 400}})
    get = replay(gw, "--calls", reads["dynamodb:GetItem"]["id"], "--to", moto.url, "--json")
    [r] = json.loads(get.stdout)
    assert r["result"] == "values differ", r
    [change] = r["diff"]
    assert "the record keeps its first 300 bytes" in change["path"], change
    assert '"first xxx' in change["old"] and '"second xxx' in change["new"], change


# -- units -------------------------------------------------------------------------------------


def call(**kw) -> dict:
    base = {"id": "c1", "kind": "call", "decision": "allow", "outcome": "forwarded", "status": 200,
            "access_level": "Read", "role": "arn:aws:iam::123456789012:role/r", "method": "POST",
            "url": "https://dynamodb.us-east-1.amazonaws.com/", "service": "dynamodb", "operation": "GetItem",
            "region": "us-east-1", "request_headers": [["X-Amz-Target", "DynamoDB_20120810.GetItem"]],
            "params": {"TableName": "t", "Key": {"pk": {"S": "a"}}}, "request_body": None,
            "request_body_size": 40, "masked": []}
    return {**base, **kw}


@pytest.mark.parametrize("changes, words", [
    ({"decision": "deny", "rule": "no-iam"}, "denied by no-iam"),
    ({"decision": "approve", "outcome": "held", "approver": None}, "never released"),
    ({"outcome": "failed"}, "not forwarded"),
    ({"kind": "connect"}, "connection record"),
    ({"access_level": "Write"}, "--allow-writes"),
    ({"access_level": "Permissions management"}, "--allow-writes"),
    ({"access_level": None}, "access level is unknown"),
    ({"decision": "approve", "approver": "sre-sam"}, "needed an approval"),
    ({"masked": [{"part": "request", "path": "SecretString", "by": "sensitive", "count": 1}]}, "masked"),
    ({"masked": [{"part": "params", "path": "Item.ssn", "by": "policy", "count": 1}]}, "masked"),
])
def test_skip_reasons(changes, words):
    assert words in rp.skip_reason(call(**changes), allow_writes=False)


def test_response_masking_alone_does_not_stop_a_replay():
    assert rp.skip_reason(call(masked=[{"part": "response", "path": "Item", "by": "policy", "count": 1}]),
                          allow_writes=False) is None


def test_rebuilds_bodies_from_parameters():
    req = rp.rebuild(call(operation="PutItem", access_level="Write",
                          params={"TableName": "t", "Item": {"pk": {"S": "a"}, "b": {"B": "AAE="}}}))
    assert json.loads(req.body) == {"TableName": "t", "Item": {"pk": {"S": "a"}, "b": {"B": "AAE="}}}
    assert req.rebuilt and ("Content-Type", "application/x-amz-json-1.0") in req.headers
    assert req.signing_name == "dynamodb" and req.host == "dynamodb.us-east-1.amazonaws.com"
    q = rp.rebuild(call(service="sqs", operation="SendMessage", url="https://sqs.us-east-1.amazonaws.com/",
                        request_headers=[], params={"QueueUrl": "https://q", "MessageBody": "hi"}))
    assert json.loads(q.body) == {"QueueUrl": "https://q", "MessageBody": "hi"} or b"MessageBody=hi" in q.body
    ec2 = rp.rebuild(call(service="ec2", operation="DescribeInstances", url="https://ec2.us-east-1.amazonaws.com/",
                          request_headers=[["Content-Type", "application/x-www-form-urlencoded"]],
                          params={"InstanceIds": ["i-1"]}))
    assert b"Action=DescribeInstances" in ec2.body and b"InstanceId.1=i-1" in ec2.body
    xml = rp.rebuild(call(service="s3", operation="PutBucketTagging", method="PUT",
                          url="https://b.s3.amazonaws.com/?tagging", request_headers=[["Content-MD5", "x"]],
                          params={"Bucket": "b", "Tagging": {"TagSet": [{"Key": "k", "Value": "v"}]}}))
    assert b"<Key>k</Key>" in xml.body and not any(k == "Content-MD5" for k, _ in xml.headers)
    assert xml.path == "/" and xml.query == "tagging"


def test_exact_stored_bodies_are_sent_as_they_were():
    import hashlib

    body = '{"TableName":"t","Key":{"pk":{"S":"a"}}}'
    req = rp.rebuild(call(request_body=body, request_body_sha256=hashlib.sha256(body.encode()).hexdigest()))
    assert req.body == body.encode() and not req.rebuilt


def test_unrebuildable_bodies_are_skipped():
    with pytest.raises(rp.Unreplayable, match="streamed and not kept"):
        rp.rebuild(call(service="s3", operation="PutObject", method="PUT", url="https://b.s3.amazonaws.com/k",
                        params={"Bucket": "b", "Key": "k"}, request_body_size=5))
    with pytest.raises(rp.Unreplayable, match="masked"):
        rp.rebuild(call(params={"TableName": "t", "Key": {"pk": {"S": "agentgate:masked:hmac-0123456789ab"}}}))
    with pytest.raises(rp.Unreplayable, match="not kept"):
        rp.rebuild(call(params=None))


def test_structural_diff():
    old = json.dumps({"Item": {"a": {"S": "1"}, "b": {"N": "2"}}, "RequestId": "r1"})
    new = json.dumps({"Item": {"a": {"S": "1"}, "c": {"N": "3"}}, "RequestId": "r2"})
    changes = {(c.path, c.kind, c.volatile) for c in rp.structural_diff(old, new)}
    assert changes == {("Item.b", "removed", False), ("Item.c", "added", False), ("RequestId", "changed", True)}
    xml_old = "<R xmlns='x'><Name>b</Name><Contents><Key>a</Key></Contents><RequestId>1</RequestId></R>"
    xml_new = "<R xmlns='x'><Name>b</Name><Contents><Key>a</Key></Contents><Contents><Key>z</Key></Contents><RequestId>2</RequestId></R>"
    changes = {(c.path, c.kind) for c in rp.structural_diff(xml_old, xml_new)}
    assert ("R.Contents", "type") in changes and ("R.RequestId", "changed") in changes
    assert rp.structural_diff("same text", "same text") == []


def test_a_compressed_answer_is_compared_as_sent_and_never_inflated_whole(upstream, monkeypatch):
    """Against a real loopback server (the canned upstream, which also answers the replay's STS
    call): an answer the record keeps only the digest of is compared by the digest of the bytes
    as sent, compressed or not, as the recorder took it; an answer whose body was kept is inflated
    no further than the masker parses, so a small br body that inflates to 512 MB is reported as
    too large to show, not inflated; and the replay asks for no encoding the agent did not."""
    import gzip
    import hashlib
    import tracemalloc

    from addons.core.credentials import CredentialBroker
    from addons.core.masking import Masker
    from tests.support.bombs import bomb

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", upstream.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "replay-test")
    document = json.dumps({"Items": [{"k": {"S": str(i)}} for i in range(200)]}).encode()
    packed = gzip.compress(document)
    upstream.encoded.update({"gzipped.json": ("gzip", packed), "bomb.json": ("br", bomb("br"))})

    def get(key: str, **kw) -> dict:
        return call(id=key, service="s3", operation="GetObject", method="GET", url=f"https://b.s3.amazonaws.com/{key}",
                    request_headers=[], params={"Bucket": "b", "Key": key}, request_body_size=0, **kw)

    recorded = [get("gzipped.json", response_body_sha256=hashlib.sha256(packed).hexdigest()),
                get("bomb.json", response_body='[ ]', response_body_sha256="0" * 64)]
    with rp.Replayer(CredentialBroker(endpoint_url=upstream.url), target=upstream.url,
                     masker=Masker(b"k" * 32)) as replayer:
        tracemalloc.start()
        try:
            outcomes = [replayer.send(p) for p in rp.plan(recorded)]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    same, bombed = outcomes
    assert (same.status, same.error, same.changes) == (200, None, []), same
    assert bombed.status == 200 and [(c.path, c.kind) for c in bombed.changes] == [("(body)", "changed")]
    assert "once inflated: not shown" in bombed.changes[0].new, bombed.changes
    assert peak < 64 << 20, peak
    sent = [dict((k.lower(), v) for k, v in r[2]) for r in upstream.requests if r[1].startswith("/")
            and r[1].split("?")[0].endswith((".json"))]
    assert sent and all(h.get("accept-encoding") == "identity" for h in sent), sent


def test_what_an_agent_wrote_prints_written_out(gateway, issuer, moto):
    """A recorded body holding characters a terminal acts on (a C1 CSI) or that change how text
    shows (a right-to-left override) prints them written out, in the dry run and in the JSON."""
    ddb = client(gateway, "dynamodb", proxy_token=issuer.mint(PRINCIPAL))
    ddb.create_table(TableName="replay-shown", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    raw = '{"TableName": "replay-shown", "Key": {"pk": {"S": "x\u202elqs.pukcab\u009b2J"}}}'.encode()

    def send_raw(request, **_):
        request.body = raw
        request.headers["Content-Length"] = str(len(raw))
    ddb.meta.events.register("before-send.dynamodb.GetItem", send_raw)
    ddb.get_item(TableName="replay-shown", Key={"pk": {"S": "x"}})
    call = json.loads(gateway.cli("calls", "list", "--principal", PRINCIPAL, "--action", "dynamodb:GetItem", "--json",
                                  "--limit", "1").stdout)[0]
    assert "\u202e" in json.dumps(call["params"], ensure_ascii=False)  # the record keeps what was sent
    out = replay(gateway, "--calls", call["id"], "--to", moto.url, "--dry-run").stdout
    assert "x\\u202elqs.pukcab\\x9b2J" in out and "\u202e" not in out and "\u009b" not in out
    out = replay(gateway, "--calls", call["id"], "--to", moto.url, "--dry-run", "--json").stdout
    assert "\u202e" not in out and "\u009b" not in out
    assert json.loads(out)[0]["body"] == raw.decode()  # JSON's own escapes: the same text once parsed


def test_a_replay_without_readable_policies_sends_nothing(gateway, moto, session, tmp_path):
    """A replay assumes each role with the session policy the policies give it: policies it cannot
    read (a broken file, a directory that is not there) stop it before anything is sent, saying
    why, rather than assuming the role unscoped."""
    read = session["calls"]["GetItem"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.yaml").write_text("version: 1\nrules: [\n")
    for where in (broken, tmp_path / "nowhere"):
        p = gateway.cli("replay", "--calls", read["id"], "--to", moto.url, check=False, timeout=120,
                        env={"AGENTGATE_POLICIES": str(where)})
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
        err = p.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"Error: cannot read the policies at {where} ("), p.stderr
        assert "not without them" in err[0] and "Nothing was sent" in err[0] and "replaying" not in p.stderr
        assert p.stdout == ""
    # a dry run signs nothing, and needs no policies
    p = gateway.cli("replay", "--calls", read["id"], "--to", moto.url, "--dry-run", check=False, timeout=120,
                    env={"AGENTGATE_POLICIES": str(tmp_path / "nowhere")})
    assert p.returncode == 0 and read["id"] in p.stdout, p.stderr


def test_exit_code_says_whether_any_answer_differs(gateway, moto, session):
    """--exit-code, as git diff --exit-code: 0 when every replayed call was answered as recorded
    (volatile values aside), 1 with a line naming the first that was not; without it, 0 either way."""
    same = [session["calls"][op]["id"] for op in ("GetObject", "GetItem")]
    p = replay(gateway, "--calls", ",".join(same), "--to", moto.url, "--exit-code", "--json")
    assert p.returncode == 0 and [r["result"] for r in json.loads(p.stdout)] == ["same", "same"]
    # CreateTable again: 400, the table exists now
    p = replay(gateway, session["id"], "--to", moto.url, "--allow-writes", "--exit-code", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert "replayed calls were answered otherwise than recorded: call " in line, p.stderr
    assert p.stdout.strip()  # the table was printed first
    p = replay(gateway, session["id"], "--to", moto.url, "--allow-writes", check=False)
    assert p.returncode == 0


def test_what_a_write_makes_anew_is_volatile_and_a_reads_ids_are_not():
    """A replayed SendMessage gets a new MessageId (a new instance, upload or execution its new id,
    ARN or sequence number): volatile in the answers of calls that change something, so that
    --exit-code does not call such a replay different; a read's ids are what it read, and count.
    A receipt handle is new on every receive."""
    old = json.dumps({"MessageId": "m-1", "MD5OfMessageBody": "abc", "SequenceNumber": "1", "ExecutionArn": "arn:1"})
    new = json.dumps({"MessageId": "m-2", "MD5OfMessageBody": "abc", "SequenceNumber": "2", "ExecutionArn": "arn:2"})
    assert {(c.path, c.volatile) for c in rp.structural_diff(old, new, writes=True)} == {
        ("MessageId", True), ("SequenceNumber", True), ("ExecutionArn", True)}
    assert {(c.path, c.volatile) for c in rp.structural_diff(old, new)} == {
        ("MessageId", False), ("SequenceNumber", False), ("ExecutionArn", False)}
    changed_body = json.dumps({"MessageId": "m-2", "MD5OfMessageBody": "def"})
    assert [(c.path, c.volatile) for c in rp.structural_diff(old, changed_body, writes=True)
            if c.kind == "changed"] == [("MessageId", True), ("MD5OfMessageBody", False)]
    received = [json.dumps({"Messages": [{"MessageId": "m-1", "ReceiptHandle": h, "Body": "x"}]}) for h in ("h1", "h2")]
    assert [(c.path, c.volatile) for c in rp.structural_diff(*received)] == [("Messages[0].ReceiptHandle", True)]


def test_a_replayed_send_is_answered_as_recorded(gateway, issuer, moto):
    """End to end: SQS SendMessage replayed with --allow-writes --exit-code against moto, which
    gives the message a new id: the replay is `same` apart from volatile values, exit code 0."""
    sqs = client(gateway, "sqs", proxy_token=issuer.mint("replay-sender"))
    url = sqs.create_queue(QueueName="replay-sends")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    calls = json.loads(gateway.cli("calls", "list", "--principal", "replay-sender", "--json").stdout)
    [send] = [c for c in calls if c["operation"] == "SendMessage"]
    p = replay(gateway, "--calls", send["id"], "--to", moto.url, "--allow-writes", "--exit-code", "--json", check=False)
    [result] = json.loads(p.stdout)
    assert p.returncode == 0, (p.stderr, result)
    assert [c["path"] for c in result["diff"] if not c["volatile"]] == [] and "MessageId" in {
        c["path"] for c in result["diff"]}
