"""The gateway's own JIT credentials, echoed by upstream in an answer (S3's SignatureDoesNotMatch
quotes the key id and the canonical request it computed, session token included), reach neither
the agent nor the store."""

from __future__ import annotations

import botocore.exceptions
import pytest

from tests.support.gateway import Gateway
from tests.support.upstream import CannedUpstream
from tests.test_recording_e2e import GATEWAY_KEY, agent


def test_credentials_upstream_echoes_reach_neither_the_agent_nor_the_record(tmp_path, issuer):
    with CannedUpstream() as up:
        gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=up.url, aws_key=GATEWAY_KEY)
        gw.sent = []
        with gw:
            sub, s3 = agent(gw, issuer, "echoed", "s3")
            with pytest.raises(botocore.exceptions.ClientError) as e:
                s3.get_object(Bucket="b", Key="echo-credentials")
            got = e.value.response
        assert got["Error"]["Code"] == "SignatureDoesNotMatch"
        assert got["Error"]["AWSAccessKeyId"] == "agentgate:masked:jit-credential"
        hexed = " ".join(f"{b:02x}" for b in up.session_token.encode())
        assert up.access_key not in str(got) and up.session_token not in str(got) and hexed not in str(got)
        [record] = [r for r in gw.records() if r["principal"] == sub]
        assert "agentgate:masked:jit-credential" in record["response_body"]
        assert "JIT credentials, which upstream echoed, replaced" in record["body_note"]
        assert record["response_body_sha256"]  # of what upstream sent
        stored = b"".join(p.read_bytes() for p in gw.db_path.parent.glob(gw.db_path.name + "*"))
        assert up.access_key.encode() not in stored and up.session_token.encode() not in stored
        assert hexed.encode() not in stored
