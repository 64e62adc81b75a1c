"""Real parts for the tests: moto in server mode with authentication on (the gateway's STS and
upstream), a local OIDC issuer, real gateway processes, boto3 and the AWS CLI as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gateway import Gateway
from tests.support.oidc import OIDCIssuer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def issuer():
    with OIDCIssuer() as i:
        yield i


@pytest.fixture(scope="session")
def moto():
    """moto with an IAM user `jit-broker` (the gateway's own credentials) and role `agent-role`;
    authentication is on, so only requests signed with credentials moto issued succeed."""
    from tests.support.moto_server import running_moto

    with running_moto() as server:
        yield server


@pytest.fixture(scope="module")
def upstream():
    """The canned stand-in for AWS (tests/support/upstream.py), one per test module, so that a
    module's count of the requests it received is its own. test_faults.py has a faulty one instead."""
    from tests.support.upstream import CannedUpstream

    with CannedUpstream() as up:
        yield up


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory):
    """A non-AWS HTTPS server on loopback with its own self-signed certificate."""
    from tests.support.tls_server import TLSServer

    with TLSServer(tmp_path_factory.mktemp("tls")) as s:
        yield s


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, issuer, moto, tls_server):
    """One gateway for the data-path tests, upstream moto, SQLite store; the loopback TLS server
    is on its allow_hosts."""
    gw = Gateway(tmp_path_factory.mktemp("gw"), issuer=issuer.issuer, upstream=moto.url,
                 aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key),
                 settings={"oidc_leeway": 1, "allow_hosts": [f"127.0.0.1:{tls_server.port}"],
                           "allow_private": [f"127.0.0.1:{tls_server.port}"]})
    with gw:
        yield gw
    print(gw.log()[-5000:])


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An agentgate home with a known chain key, and no settings leaking in from the environment."""
    from tests.support.home import make_home

    return make_home(tmp_path, monkeypatch)


@pytest.fixture
def token_file(tmp_path, issuer):
    """A token file for agent-1 in group data-agents, as a platform would project it."""
    def make(sub: str = "agent-1", **claims) -> Path:
        path = tmp_path / f"{sub}.jwt"
        path.write_text(issuer.mint(sub, **claims))
        return path
    return make


@pytest.fixture(scope="session")
def aws_cli() -> str:
    """The AWS CLI, from its own venv (it ships its own botocore)."""
    exe = os.environ.get("AGENTGATE_TEST_AWS_CLI") or str(ROOT / ".venv-awscli" / "bin" / "aws")
    if not Path(exe).exists():
        venv = ROOT / ".venv-awscli"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "awscli"], check=True)
        exe = str(venv / "bin" / "aws")
    return exe


def run_agent(env: dict, code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """An unmodified boto3 script run as its own process with only ``env``."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
