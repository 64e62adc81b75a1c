"""moto in server mode, in its own process, as the AWS stand-in for the tests.

Set-up runs with authentication off (moto's default); ``enable_auth()`` then switches it on, after
which only requests signed with credentials moto issued succeed: the broker's access key, and the
ASIA credentials ``sts.assume_role`` hands out for ``agent-role``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import NamedTuple

import boto3

ACCOUNT_ID = "123456789012"
BROKER_USER = "jit-broker"
AGENT_ROLE = "agent-role"

# What the agents' role may do: enough for the tests, and not iam:* (so a denial can be shown).
AGENT_ROLE_ACTIONS = [
    "s3:*",
    "dynamodb:*",
    "sqs:*",
    "sns:*",
    "lambda:*",
    "secretsmanager:*",
    "ssm:*",
    "ec2:Describe*",
    "ec2:RunInstances",
    "ec2:RequestSpotFleet",
    "kms:*",
    "sts:GetCallerIdentity",
    "logs:*",
]


class JitBroker(NamedTuple):
    """The gateway's own identity in moto, and the role it hands agents."""

    access_key_id: str
    secret_access_key: str
    role_arn: str


class MotoServer:
    """``python -m moto.server`` on a free loopback port.

    Usable as a context manager; ``start()``/``stop()`` otherwise."""

    def __init__(self, port: int | None = None, startup_timeout: float = 30.0) -> None:
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.broker: JitBroker | None = None

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)  # unset: no authentication until enable_auth()
        env.pop("MOTO_CALL_RESET_API", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_up()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def reset(self) -> None:
        """Forget every resource and switch authentication off, so set-up can run again."""
        self._post("/moto-api/reset", b"")
        self.disable_auth()

    def enable_auth(self) -> None:
        """From now on every request must be signed with credentials moto issued."""
        self._post("/moto-api/reset-auth", b"0")

    def disable_auth(self) -> None:
        self._post("/moto-api/reset-auth", b"inf")

    def client(self, service: str, region: str = "us-east-1", **credentials):
        """A boto3 client talking straight to moto (dummy credentials unless given)."""
        credentials = credentials or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        return boto3.client(service, region_name=region, endpoint_url=self.url, **credentials)

    def setup_jit_broker(self) -> JitBroker:
        """IAM user ``jit-broker`` (may call sts:AssumeRole) with an access key, and role
        ``agent-role`` that trusts it. Run with authentication off, then ``enable_auth()``."""
        iam = self.client("iam")
        user_arn = iam.create_user(UserName=BROKER_USER)["User"]["Arn"]
        key = iam.create_access_key(UserName=BROKER_USER)["AccessKey"]
        iam.put_user_policy(
            UserName=BROKER_USER,
            PolicyName="assume-agent-roles",
            PolicyDocument=_policy(["sts:AssumeRole"]),
        )
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": user_arn}, "Action": "sts:AssumeRole"}
            ],
        }
        role_arn = iam.create_role(RoleName=AGENT_ROLE, AssumeRolePolicyDocument=json.dumps(trust))[
            "Role"
        ]["Arn"]
        iam.put_role_policy(
            RoleName=AGENT_ROLE, PolicyName="agent-actions", PolicyDocument=_policy(AGENT_ROLE_ACTIONS)
        )
        self.broker = JitBroker(key["AccessKeyId"], key["SecretAccessKey"], role_arn)
        return self.broker

    def _post(self, path: str, body: bytes) -> None:
        request = urllib.request.Request(
            self.url + path, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=1) as r:
                    r.read()
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.url} within {self.startup_timeout} s")


def _policy(actions: list[str]) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
        }
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_moto():
    """A moto server with the JIT broker user and role set up, then authentication switched on."""
    server = MotoServer()
    server.start()
    try:
        server.broker = server.setup_jit_broker()
        server.enable_auth()
        yield server
    finally:
        server.stop()
