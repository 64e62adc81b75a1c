"""No token or credential is ever logged or stored. A full session runs through a real gateway
(upstream moto with authentication on, verbose log): an unmodified boto3 agent, as its own process,
calls with its token as proxy credentials (transport A) and as the AWS session token (transport B),
creates a secret and reads it back, uploads and downloads an S3 object, is denied by policy, and
presents an expired token both ways. Then every line of the gateway's log, every column of every
row of every table of the store, and the store's raw bytes are searched for: the agents' JWTs
(whole, and their payload and signature alone), the Proxy-Authorization value, the JIT credentials
moto issued to the gateway (read from moto's own state), the gateway's own AWS secret key, the
secret's value, and the gateway's keys (CA private key, fingerprint key, chain key, admin token)."""

from __future__ import annotations

import base64
import json
import re
import secrets
import sqlite3
import urllib.request

import pytest

from tests.conftest import run_agent
from tests.support.gateway import Gateway

AGENT = r'''
import json
import boto3, botocore.config, botocore.exceptions
cfg = json.loads(CFG)

def client(service, a=None, b=None):
    proxy = f"http://agent:{a}@{cfg['gateway']}" if a else f"http://{cfg['gateway']}"
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="agentgate",
                        aws_secret_access_key="agentgate-not-a-secret", aws_session_token=b, verify=cfg["ca"],
                        config=botocore.config.Config(proxies={"https": proxy}, retries={"total_max_attempts": 1}))

a, b, expired = cfg["token_a"], cfg["token_b"], cfg["expired"]
out = {"arn_a": client("sts", a=a).get_caller_identity()["Arn"],
       "arn_b": client("sts", b=b).get_caller_identity()["Arn"]}
client("secretsmanager", a=a).create_secret(Name=cfg["secret_name"], SecretString=cfg["secret_value"])
out["secret"] = client("secretsmanager", b=b).get_secret_value(SecretId=cfg["secret_name"])["SecretString"]
s3 = client("s3", a=a)
s3.create_bucket(Bucket=cfg["bucket"])
s3.put_object(Bucket=cfg["bucket"], Key="k.txt", Body=cfg["secret_value"].encode() * 100)
out["object"] = s3.get_object(Bucket=cfg["bucket"], Key="k.txt")["Body"].read().decode()[:len(cfg["secret_value"])]
try:
    client("iam", a=a).list_users()
    out["iam"] = "allowed"
except botocore.exceptions.ClientError as e:
    out["iam"] = e.response["Error"]["Code"]
try:
    client("sts", b=expired).get_caller_identity()
    out["expired_b"] = "allowed"
except botocore.exceptions.ClientError as e:
    out["expired_b"] = e.response["Error"]["Code"]
try:
    client("sts", a=expired).get_caller_identity()
    out["expired_a"] = "allowed"
except botocore.exceptions.BotoCoreError as e:
    out["expired_a"] = type(e).__name__
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def moto():
    """A moto of this module's own: the credentials it issued are read from its whole state
    (/moto-api/data.json), which resources other tests left in the shared moto can make unreadable."""
    from tests.support.moto_server import running_moto

    with running_moto() as server:
        yield server


@pytest.fixture(scope="module")
def session(tmp_path_factory, issuer, moto):
    """The gateway, what the agent was given and got, after the whole session has run."""
    gw = Gateway(tmp_path_factory.mktemp("secrets"), issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key))
    subs = {"a": f"agent-secrets-a-{secrets.token_hex(3)}", "b": f"agent-secrets-b-{secrets.token_hex(3)}"}
    cfg = {"gateway": f"127.0.0.1:{gw.port}", "ca": str(gw.ca_file),
           "token_a": issuer.mint(subs["a"]), "token_b": issuer.mint(subs["b"]),
           "expired": issuer.mint("agent-secrets-expired", expires_in=-300),
           "secret_name": f"db-password-{secrets.token_hex(3)}", "secret_value": f"s3cr3t-{secrets.token_urlsafe(24)}",
           "bucket": f"secrets-{secrets.token_hex(4)}"}
    with gw:
        p = run_agent({"PATH": "/usr/bin:/bin", "HOME": str(gw.home)}, f"CFG = {json.dumps(cfg)!r}\n" + AGENT)
        assert p.returncode == 0, p.stderr[-3000:]
        got = json.loads(p.stdout)
    yield gw, cfg, subs, got


def moto_issued(moto, subs: dict) -> list[dict]:
    """The credentials moto's STS issued (AssumeRole), from moto's own state."""
    data = json.loads(urllib.request.urlopen(f"{moto.url}/moto-api/data.json", timeout=10).read())
    return data.get("sts", {}).get("AssumedRole", [])


def secret_pieces(gw, cfg: dict, jit: list[dict], moto) -> dict[str, str]:
    pieces: dict[str, str] = {}
    for name in ("token_a", "token_b", "expired"):
        token = cfg[name]
        pieces[name] = token
        header, payload, signature = token.split(".")
        pieces[f"{name} payload"], pieces[f"{name} signature"] = payload, signature
        pieces[f"{name} as Proxy-Authorization"] = base64.b64encode(f"agent:{token}".encode()).decode()
    for i, c in enumerate(jit):
        pieces[f"JIT access key id {i}"] = c["access_key_id"]
        pieces[f"JIT secret key {i}"] = c["secret_access_key"]
        pieces[f"JIT session token {i}"] = c["session_token"]
    pieces["gateway's own secret key"] = moto.broker.secret_access_key
    pieces["secret value"] = cfg["secret_value"]
    keys = gw.home / "keys"
    for name in ("fingerprint.key", "chain.key", "admin.token"):
        pieces[name] = (keys / name).read_text().strip()
    pem = (gw.home / "certs" / "mitmproxy-ca.pem").read_text()
    key_body = re.search(r"-----BEGIN RSA PRIVATE KEY-----\n(.*?)-----END", pem, re.S).group(1)
    for i, line in enumerate(key_body.split()):
        pieces[f"CA private key line {i}"] = line
    return pieces


def test_the_session_ran_as_intended(session, moto):
    gw, cfg, subs, got = session
    assert got["arn_a"].endswith(f"/{subs['a']}") and got["arn_b"].endswith(f"/{subs['b']}")
    assert got["secret"] == cfg["secret_value"] and got["object"] == cfg["secret_value"]
    assert got["iam"] == "AccessDenied" and got["expired_b"] == "ExpiredToken" and got["expired_a"] == "ProxyConnectionError"
    issued = [c for c in moto_issued(moto, subs) if c["session_name"] in subs.values()]
    assert {c["session_name"] for c in issued} == set(subs.values())  # the gateway's JIT credentials, one per agent
    records = gw.records()
    assert len(records) == 10  # 7 calls that went through, 1 denied, 1 refused token (B), 1 refused CONNECT (A)
    masked = [r for r in records if r["action"] == "secretsmanager:GetSecretValue"]
    assert len(masked) == 1 and "agentgate:masked" in masked[0]["response_body"]


def test_no_secret_is_in_any_log_line(session, moto):
    gw, cfg, subs, _ = session
    pieces = secret_pieces(gw, cfg, moto_issued(moto, subs), moto)
    lines = gw.log().splitlines()
    assert any("issued credentials for" in ln for ln in lines) and any("refused CONNECT" in ln for ln in lines)
    leaks = [(what, n) for n, line in enumerate(lines, 1) for what, value in pieces.items() if value in line]
    assert not leaks, f"in the gateway's log: {leaks[:10]}"


def test_no_secret_is_in_any_column_of_the_store(session, moto):
    gw, cfg, subs, _ = session
    pieces = secret_pieces(gw, cfg, moto_issued(moto, subs), moto)
    con = sqlite3.connect(gw.db_path)
    try:
        tables = [t for (t,) in con.execute("select name from sqlite_master where type = 'table'")]
        assert {"calls", "sessions", "approvals", "policy_versions"} <= set(tables), tables
        leaks, cells = [], 0
        for table in tables:
            cursor = con.execute(f'select * from "{table}"')
            columns = [d[0] for d in cursor.description]
            for row in cursor:
                for column, value in zip(columns, row):
                    if value is None:
                        continue
                    cells += 1
                    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                    leaks += [(what, table, column) for what, v in pieces.items() if v in text]
    finally:
        con.close()
    assert cells > 200
    assert not leaks, f"in the store: {leaks[:10]}"
    raw = b"".join(p.read_bytes() for p in gw.db_path.parent.glob("agentgate.db*"))
    assert not [what for what, v in pieces.items() if v.encode() in raw]
