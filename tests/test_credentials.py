"""JIT credentials (addons/core/credentials.py): what the gateway asks STS for, checked on the wire
against a loopback STS stand-in that records every request, through the broker and through real
gateway processes; and against botocore's own STS model for what AWS accepts.

- principals never share a RoleSessionName or SourceIdentity (a subject AWS cannot take as it is
  gets a digest of issuer and subject), and every name and session tag is within AWS's patterns;
- STS is asked in ``sts_region``, else the SDK environment's region, else the role's partition's
  default region (a GovCloud role: us-gov-west-1), also with ``upstream`` moving the endpoint;
- an STS answer that cannot be used is a 503 that quotes no STS body, a transient STS error is a 503,
  and a refusal tells the agent the role and STS's error code, not STS's message;
- cached credentials are per role binding as STS was asked for them, the duration included;
- a role binding whose duration is not longer than ``credential_refresh_margin`` stops the start.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import json
import re
import threading
import time
import uuid
from types import SimpleNamespace
from urllib.parse import parse_qs

import boto3
import botocore.config
import botocore.exceptions
import botocore.loaders
import pytest
import regex

from addons.core.credentials import CredentialBroker, CredentialError, principal_tag, session_name
from tests.support.gateway import TEST_POLICY, Gateway

ISS = "https://issuer.example"
KEY = ("AKIAGATEWAYCREDENTIALS", "gateway-secret-for-the-stand-in")
ROLE = "arn:aws:iam::123456789012:role/agent-role"
GOV_ROLE = "arn:aws-us-gov:iam::123456789012:role/agent-role"
PARTIAL_KEY = "ASIAPARTIALKEY4ZX7Q"  # in the unreadable STS answer: must be quoted nowhere
BROKER_MESSAGE = ("User: arn:aws:iam::123456789012:user/jit-broker is not authorized to perform: sts:AssumeRole "
                  "on resource: arn:aws:iam::123456789012:role/agent-role")

# subjects AWS cannot take as they are, each next to one it must not be confused with
SUBJECTS = [
    ("auth0|alice", "auth0-alice"),
    ("repo:org/name:environment:production", "repo:org/name:ref:refs/heads/x"),
    ("system:serviceaccount:a-fairly-long-namespace-name:the-service-account-of-team-one",
     "system:serviceaccount:a-fairly-long-namespace-name:the-service-account-of-team-two"),
    ("x" * 64 + "1", "x" * 64 + "2"),
    ("élise", "elise"),
    ("用户", "--"),
    ("a", "a-"),
    ("alice-abcdefghijkl", "alice-abcdefghijkx"),
]


def sts_shapes() -> dict:
    return botocore.loaders.create_loader().load_service_model("sts", "service-2")["shapes"]


def check(value: str, shape: str, *, ascii_only: bool = False) -> None:
    """``value`` as botocore's STS model says AWS takes it (its pattern, Java's: ``\\w`` is ASCII)."""
    model = sts_shapes()[shape]
    pattern = regex.compile(model["pattern"], regex.ASCII if ascii_only else 0)
    assert pattern.fullmatch(value), (shape, model["pattern"], value)
    assert model.get("min", 0) <= len(value) <= model["max"], (shape, value)
    if ascii_only:
        assert value.isascii(), (shape, value)


# -- a loopback STS that records what it is sent ------------------------------------------------------

OK = """<{op}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><{op}Result>
<Credentials><AccessKeyId>ASIASTANDIN{n:09d}</AccessKeyId><SecretAccessKey>stand-in-secret</SecretAccessKey>
<SessionToken>stand-in-token</SessionToken><Expiration>{exp}</Expiration></Credentials>
<AssumedRoleUser><AssumedRoleId>AROASTANDIN:{name}</AssumedRoleId>
<Arn>arn:aws:sts::123456789012:assumed-role/agent-role/{name}</Arn></AssumedRoleUser>
</{op}Result><ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></{op}Response>"""

NO_CREDENTIALS = """<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/agent-role/x</Arn></AssumedRoleUser>
</AssumeRoleResult><ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></AssumeRoleResponse>"""

UNREADABLE = f"<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>{PARTIAL_KEY}<Secret"

ERROR = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>
<Code>{code}</Code><Message>{message}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>"""


class RecordingSTS:
    """STS and AWS on loopback. Every STS request is kept in ``sts`` (headers and form); its answer
    depends on the RoleSessionName's start: ``empty-`` an answer without credentials, ``garbled-``
    a cut-off body quoting part of an access key, ``denied-`` AccessDenied naming the gateway's own
    IAM user, ``idp-`` IDPCommunicationError; else credentials for DurationSeconds. Other requests get an
    empty DynamoDB table list."""

    def __init__(self) -> None:
        self.sts: list[dict] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
                if form.get("Action", "").startswith("AssumeRole"):
                    owner.sts.append({"headers": dict(self.headers), "form": form})
                    return self.send(*owner.answer(form))
                if self.headers.get("x-amz-target"):
                    return self.send(200, '{"TableNames": []}', "application/x-amz-json-1.0")
                return self.send(200, "<ok/>", "text/xml")

            do_GET = do_PUT = do_POST

            def send(self, status: int, text: str, ctype: str = "text/xml") -> None:
                data = text.replace("{rid}", str(uuid.uuid4())).encode()
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, form: dict) -> tuple[int, str]:
        name = form.get("RoleSessionName", "")
        if name.startswith("empty-"):
            return 200, NO_CREDENTIALS
        if name.startswith("garbled-"):
            return 200, UNREADABLE
        if name.startswith("denied-"):
            return 403, ERROR.format(code="AccessDenied", message=BROKER_MESSAGE, rid="{rid}")
        if name.startswith("idp-"):
            return 400, ERROR.format(code="IDPCommunicationError", message="the identity provider could not be reached",
                                     rid="{rid}")
        lifetime = datetime.timedelta(seconds=int(form.get("DurationSeconds") or 3600))
        exp = (datetime.datetime.now(datetime.UTC) + lifetime).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 200, OK.format(op=form["Action"], n=len(self.sts), exp=exp, name=name, rid="{rid}")

    def sent_for(self, name_start: str) -> list[dict]:
        return [r for r in self.sts if r["form"].get("RoleSessionName", "").startswith(name_start)]

    def __enter__(self) -> "RecordingSTS":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def scope(request: dict) -> str:
    """The SigV4 credential scope's region/service of a recorded STS request."""
    return re.search(r"Credential=[^/]+/\d{8}/([^,]+)/aws4_request", request["headers"]["Authorization"]).group(1)


@pytest.fixture(scope="module")
def sts():
    with RecordingSTS() as s:
        yield s


@pytest.fixture
def sdk_env(monkeypatch, tmp_path):
    """The gateway's own credentials, and no region, profile or STS endpoint from this machine."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS",
                 "AWS_SESSION_TOKEN", "AWS_STS_REGIONAL_ENDPOINTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEY[1])
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def binding(role: str = ROLE, duration: int = 3600, *, web_identity: bool = False, session_policy: str | None = None):
    return SimpleNamespace(role_arn=role, session_policy=session_policy, duration=duration, web_identity=web_identity)


def who(sub: str, iss: str = ISS):
    return SimpleNamespace(iss=iss, sub=sub)


def grant(broker: CredentialBroker, sub: str, b=None, token: str | None = None):
    return asyncio.run(broker.grant(who(sub), b or binding(), token))


# -- names and tags -----------------------------------------------------------------------------------


def test_distinct_principals_never_share_a_session_name_and_each_name_is_one_aws_takes():
    """'auth0|alice' and 'auth0-alice' were both 'auth0-alice', and subjects alike in their first 64
    characters were one name: one principal's CloudTrail events, SourceIdentity and aws:userid
    were another's."""
    names: dict[str, str] = {}
    for pair in SUBJECTS:
        for sub in pair:
            name = session_name(ISS, sub)
            check(name, "roleSessionNameType", ascii_only=True)
            check(name, "sourceIdentityType", ascii_only=True)
            assert len(name) <= 64
            assert names.setdefault(name, sub) == sub, f"{sub!r} and {names[name]!r} share {name!r}"
    # still readable: what AWS takes of the subject comes first
    assert session_name(ISS, "auth0|alice").startswith("auth0-alice-")
    assert session_name(ISS, "élise").startswith("elise-")
    assert session_name(ISS, "repo:org/name:environment:production").startswith("repo-org-name-environment-production-")
    # the digest covers the issuer too, and is stable
    assert session_name(ISS, "auth0|alice") != session_name("https://other.example", "auth0|alice")
    assert session_name(ISS, "auth0|alice") == session_name(ISS, "auth0|alice")


def test_a_subject_aws_takes_as_it_is_is_the_session_name():
    for sub in ("agent-1", "proto-agent", "contractor-1", "wi-agent", "a.b@example.com", "x" * 64, "ab"):
        assert session_name(ISS, sub) == sub


def test_the_principal_tag_is_one_aws_takes_and_tells_principals_apart():
    """The tag value was the subject cut at 256 characters: AWS refuses '|' (every Auth0 user),
    '#', ',', '!', '(', ')', '~' and more in a tag value."""
    values: dict[str, str] = {}
    subjects = [s for pair in SUBJECTS for s in pair] + [
        "auth0|alice", "a#b", "a,b", "a!b", "a'b", "a(b)", "a~b", "a=7Cb", "a|b", "tab\there", "x" * 300 + "|",
        "x" * 300 + "~", "|" * 200, "😀 smile", "e\u0301", "\ud800 lone surrogate"]
    for sub in subjects:
        value = principal_tag(ISS, sub)
        check(value, "tagValueType")
        assert values.setdefault(value, sub) == sub, f"{sub!r} and {values[value]!r} share {value!r}"
    assert principal_tag(ISS, "auth0|alice") == "auth0=7Calice"
    assert principal_tag(ISS, "repo:org/name:ref:refs/heads/x") == "repo:org/name:ref:refs/heads/x"  # as it is
    assert principal_tag(ISS, "élise") == "élise"  # letters of any script are tag characters


def test_what_sts_is_sent_is_within_awss_patterns(sts, sdk_env):
    """On the wire: RoleSessionName, SourceIdentity and both session tags (keys and values) of an
    AssumeRole for an Auth0 user, a non-ASCII subject and a long GitHub subject."""
    broker = CredentialBroker(endpoint_url=sts.url)
    subjects = ["auth0|wire-alice", "auth0-wire-alice", "wire-ünïcode", "repo:org/wire:environment:production" * 3]
    for sub in subjects:
        grant(broker, sub)
    sent = sts.sts[-len(subjects):]
    names = [r["form"]["RoleSessionName"] for r in sent]
    assert len(set(names)) == len(subjects), names
    for r, sub in zip(sent, subjects):
        f = r["form"]
        assert f["SourceIdentity"] == f["RoleSessionName"] == session_name(ISS, sub)
        check(f["RoleSessionName"], "roleSessionNameType", ascii_only=True)
        check(f["SourceIdentity"], "sourceIdentityType", ascii_only=True)
        tags = {f[f"Tags.member.{i}.Key"]: f[f"Tags.member.{i}.Value"] for i in (1, 2)}
        assert set(tags) == {"agentgate-session", "agentgate-principal"}
        for k, v in tags.items():
            check(k, "tagKeyType")
            check(v, "tagValueType")
        assert tags["agentgate-principal"] == principal_tag(ISS, sub)
    assert names[2].startswith("wire-unicode-"), names[2]


def test_web_identity_sends_the_distinct_name_and_no_source_identity_or_tags(sts, sdk_env):
    broker = CredentialBroker(endpoint_url=sts.url)
    grant(broker, "auth0|wi-alice", binding(web_identity=True), token="the-agents-token")
    grant(broker, "auth0-wi-alice", binding(web_identity=True), token="the-agents-token")
    a, b = sts.sts[-2:]
    assert a["form"]["Action"] == b["form"]["Action"] == "AssumeRoleWithWebIdentity"
    assert a["form"]["RoleSessionName"] == session_name(ISS, "auth0|wi-alice") != b["form"]["RoleSessionName"]
    assert not any(k.startswith(("SourceIdentity", "Tags")) for k in a["form"])


# -- where STS is asked --------------------------------------------------------------------------------


@pytest.mark.parametrize("env, sts_region, role, expected", [
    ({}, None, ROLE, "us-east-1"),
    ({}, None, GOV_ROLE, "us-gov-west-1"),
    ({}, None, "arn:aws-cn:iam::123456789012:role/agent-role", "cn-northwest-1"),  # botocore's partition data
    ({"AWS_DEFAULT_REGION": "eu-west-2"}, None, ROLE, "eu-west-2"),
    ({"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "eu-west-2"}, None, ROLE, "eu-central-1"),
    ({"AWS_DEFAULT_REGION": "us-east-1"}, None, GOV_ROLE, "us-gov-west-1"),  # the environment's is another partition's
    ({"AWS_DEFAULT_REGION": "us-gov-east-1"}, None, GOV_ROLE, "us-gov-east-1"),
    ({"AWS_REGION": "eu-central-1"}, "ap-southeast-2", ROLE, "ap-southeast-2"),
    ({}, "us-gov-east-1", GOV_ROLE, "us-gov-east-1"),
    ({}, "us-gov-east-1", ROLE, "us-east-1"),  # sts_region is for roles of its partition
])
def test_sts_is_asked_in_the_region_for_the_role(sts, sdk_env, env, sts_region, role, expected):
    """The broker always signed for us-east-1: a GovCloud or China role could not be assumed, nor
    could a regional or VPC STS endpoint be used."""
    for k, v in env.items():
        sdk_env.setenv(k, v)
    broker = CredentialBroker(endpoint_url=sts.url, region=sts_region)
    assert broker.region_for(role) == expected
    grant(broker, "region-agent", binding(role))
    assert scope(sts.sts[-1]) == f"{expected}/sts"


def test_without_upstream_the_regional_endpoint_is_used(sdk_env):
    seen = []
    broker = CredentialBroker(region="eu-west-1")

    def stop(request, **_):
        seen.append(request.url)
        raise RuntimeError("not sent")

    broker._sts(broker.region_for(ROLE)).meta.events.register("before-send.sts", stop)
    with pytest.raises(CredentialError):
        grant(broker, "endpoint-agent")
    assert seen == ["https://sts.eu-west-1.amazonaws.com/"]
    gov = CredentialBroker()
    gov._sts(gov.region_for(GOV_ROLE)).meta.events.register("before-send.sts", stop)
    with pytest.raises(CredentialError):
        grant(gov, "endpoint-agent", binding(GOV_ROLE))
    assert seen[-1] == "https://sts.us-gov-west-1.amazonaws.com/"


# -- answers that cannot be used -----------------------------------------------------------------------


def test_an_unreadable_sts_answer_is_unavailable_and_quoted_nowhere(sts, sdk_env, caplog):
    broker = CredentialBroker(endpoint_url=sts.url)
    with pytest.raises(CredentialError) as e:
        grant(broker, "garbled-broker")
    assert e.value.unavailable
    assert str(e.value) == f"STS sent an answer for role {ROLE} that could not be read ({len(UNREADABLE)} bytes)"
    assert PARTIAL_KEY not in caplog.text


def test_an_sts_answer_without_credentials_is_unavailable(sts, sdk_env):
    broker = CredentialBroker(endpoint_url=sts.url)
    with pytest.raises(CredentialError) as e:
        grant(broker, "empty-broker")
    assert e.value.unavailable and "without usable credentials" in str(e.value)


def test_idp_communication_error_is_transient(sts, sdk_env):
    broker = CredentialBroker(endpoint_url=sts.url)
    with pytest.raises(CredentialError) as e:
        grant(broker, "idp-broker", binding(web_identity=True), token="the-agents-token")
    assert e.value.unavailable and str(e.value) == f"STS is unavailable for role {ROLE}: IDPCommunicationError"


def test_a_refusal_names_the_role_and_code_and_logs_stss_message(sts, sdk_env, caplog):
    broker = CredentialBroker(endpoint_url=sts.url)
    with caplog.at_level("WARNING", logger="agentgate.credentials"):
        with pytest.raises(CredentialError) as e:
            grant(broker, "denied-broker")
    assert not e.value.unavailable
    assert str(e.value) == (f"STS refused to issue credentials for role {ROLE}: AccessDenied (the gateway's log has "
                            "STS's message)")
    assert "jit-broker" not in str(e.value)
    assert BROKER_MESSAGE in caplog.text


# -- the cache -----------------------------------------------------------------------------------------


def test_a_shorter_duration_after_a_reload_gets_new_credentials(sts, sdk_env):
    """Calls kept running on credentials issued for the old, longer duration."""
    broker = CredentialBroker(endpoint_url=sts.url)
    first = grant(broker, "cache-agent", binding(duration=3600))
    assert grant(broker, "cache-agent", binding(duration=3600)) is first  # cached
    second = grant(broker, "cache-agent", binding(duration=900))
    assert second is not first
    assert [r["form"]["DurationSeconds"] for r in sts.sent_for("cache-agent")] == ["3600", "900"]
    assert grant(broker, "cache-agent", binding(duration=900)) is second


def test_a_duration_not_longer_than_the_margin_is_warned_about(sts, sdk_env, caplog):
    broker = CredentialBroker(endpoint_url=sts.url, refresh_margin=900)
    with caplog.at_level("WARNING", logger="agentgate.credentials"):
        grant(broker, "margin-agent", binding(duration=900))
        grant(broker, "margin-agent", binding(duration=900))
    assert len(sts.sent_for("margin-agent")) == 2  # never reused
    assert caplog.text.count("not longer than credential_refresh_margin") == 1


# -- through a gateway ---------------------------------------------------------------------------------


def agent(gw, token: str, service: str = "dynamodb"):
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="agentgate", aws_secret_access_key="x",
                        verify=str(gw.ca_file),
                        config=botocore.config.Config(proxies={"https": gw.proxy_url(token)},
                                                      retries={"total_max_attempts": 1}))


def error_of(call) -> tuple[int, str, str]:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    r = e.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"]["Message"]


def record_of(gw, sub: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [r for r in gw.records() if r["principal"] == sub and r["kind"] != "connect"]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no record for {sub}")


@pytest.fixture(scope="module")
def gov_gateway(tmp_path_factory, issuer, sts):
    """A gateway whose role is a GovCloud one, with its STS (and AWS) the recording stand-in; its
    SDK environment's region is us-east-1 (tests/support/gateway.py), another partition's."""
    policy = TEST_POLICY.replace("arn:aws:iam::", "arn:aws-us-gov:iam::")
    with Gateway(tmp_path_factory.mktemp("gov"), issuer=issuer.issuer, upstream=sts.url, aws_key=KEY,
                 policy=policy) as gw:
        yield gw
    print(gw.log()[-3000:])


def test_a_govcloud_role_is_assumed_in_us_gov_west_1(gov_gateway, issuer, sts):
    agent(gov_gateway, issuer.mint("gov-agent")).list_tables()
    [sent] = sts.sent_for("gov-agent")
    assert sent["form"]["RoleArn"] == GOV_ROLE
    assert scope(sent) == "us-gov-west-1/sts"


def test_two_auth0_style_principals_get_their_own_sessions_through_the_gateway(gov_gateway, issuer, sts):
    for sub in ("auth0|gw-alice", "auth0-gw-alice"):
        agent(gov_gateway, issuer.mint(sub)).list_tables()
    a, b = sts.sent_for("auth0-gw-alice")
    assert a["form"]["RoleSessionName"] != b["form"]["RoleSessionName"]
    assert b["form"]["RoleSessionName"] == "auth0-gw-alice"  # a subject AWS takes is the name as it is
    assert a["form"]["Tags.member.2.Value"] == "auth0=7Cgw-alice"
    check(a["form"]["Tags.member.2.Value"], "tagValueType")


@pytest.mark.parametrize("sub, status, code, says", [
    ("empty-gw", 503, "ServiceUnavailable", "without usable credentials"),
    ("garbled-gw", 503, "ServiceUnavailable", f"that could not be read ({len(UNREADABLE)} bytes)"),
    ("denied-gw", 403, "AccessDenied", f"STS refused to issue credentials for role {GOV_ROLE}: AccessDenied"),
])
def test_unusable_sts_answers_through_the_gateway(gov_gateway, issuer, sts, sub, status, code, says):
    """An answer without credentials was a 500 InternalFailure (signer: KeyError); an unreadable one
    quoted its body (a partial access key) to the agent, the log and the record; a refusal told
    the agent the gateway's own IAM identity."""
    got_status, got_code, message = error_of(agent(gov_gateway, issuer.mint(sub)).list_tables)
    assert (got_status, got_code) == (status, code), message
    assert says in message
    r = record_of(gov_gateway, sub)
    assert (r["outcome"], r["status"], r["rule"]) == ("refused", status, "agentgate:signer")
    everything = json.dumps(r) + message + gov_gateway.log()
    assert PARTIAL_KEY not in everything
    assert "jit-broker" not in message + (r["error"] or "")
    if sub == "denied-gw":
        assert BROKER_MESSAGE in gov_gateway.log()  # the operator has STS's message


def test_sts_region_is_honoured(tmp_path, issuer, sts):
    with Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=sts.url, aws_key=KEY,
                 settings={"sts_region": "eu-west-1"}) as gw:
        agent(gw, issuer.mint("eu-agent")).list_tables()
    [sent] = sts.sent_for("eu-agent")
    assert scope(sent) == "eu-west-1/sts"


def test_a_duration_not_longer_than_the_refresh_margin_stops_the_start(tmp_path, issuer, sts):
    policy = TEST_POLICY.replace("duration: 1h", "duration: 15m")
    gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=sts.url, aws_key=KEY, policy=policy,
                 settings={"credential_refresh_margin": 900})
    try:
        with pytest.raises(RuntimeError):
            gw.start()
    finally:
        gw.stop()
    lines = [ln for ln in gw.log().splitlines() if "credential_refresh_margin" in ln]
    assert lines == ["agentgate: test.yaml:4: role arn:aws:iam::123456789012:role/agent-role has a duration of 900s, "
                     "not longer than credential_refresh_margin (900s): lengthen the duration or lower the margin"], \
        gw.log()[-2000:]


def test_sts_region_must_be_a_region(tmp_path, monkeypatch):
    from addons.settings import SettingsError, load_settings

    monkeypatch.setenv("AGENTGATE_HOME", str(tmp_path))
    assert load_settings(sts_region="us-gov-west-1").sts_region == "us-gov-west-1"
    monkeypatch.setenv("AGENTGATE_STS_REGION", "eu-west-1")
    assert load_settings().sts_region == "eu-west-1"
    with pytest.raises(SettingsError, match="sts_region must be an AWS region"):
        load_settings(sts_region="https://sts.example")
