"""The store's writer in a process of its own (``store_writer = "process"``), through
real gateways on SQLite in front of the canned upstream, boto3 as the agent:

- calls are recorded by a child process of the gateway, which stops with it: after SIGTERM having
  written everything and checkpointed its chain head; after the gateway is killed outright (SIGKILL)
  too, once it sees its gateway gone;
- when the writer process dies, the gateway says so once and refuses every call from then on with
  an AWS-shaped 503 (fail closed), and keeps running; a worker (``workers = N``) whose writer
  process dies stops instead, and its supervisor starts it again with a new writer, so that no
  share of the agents' connections is refused for good;
- ``store_writer = "thread"`` (the default) keeps the writer in the gateway's process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import botocore.exceptions
import pytest

from addons.core.store import verify
from scripts.loadgen import descendants
from tests.support.gateway import Gateway
from tests.test_recording_commit import agent

GATEWAY_KEY = ("AKIAGATEWAYWRITERPROC", "gateway-secret-not-used-by-the-canned-upstream")


def writers_under(pid: int) -> list[int]:
    """The live writer processes in ``pid``'s process tree."""
    def cmdline(p: int) -> str:
        try:
            return Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return ""
    return [p for p in descendants(pid) if "addons.core.store_process" in cmdline(p)]  # a zombie has none


def writer_of(gw: Gateway) -> int:
    found = writers_under(gw.proc.pid)
    assert len(found) == 1, found
    return found[0]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def start(tmp_path, issuer, upstream, **settings) -> Gateway:
    settings.setdefault("store_writer", "process")
    gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY, settings=settings)
    gw.db_url = f"sqlite:///{gw.db_path}"
    return gw.start()


def list_tables(gw: Gateway, issuer, n: int) -> None:
    ddb = agent(gw, issuer, "writer", "dynamodb")
    for _ in range(n):
        assert ddb.list_tables()["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_calls_are_recorded_by_a_writer_process_that_stops_with_the_gateway(tmp_path, issuer, upstream):
    gw = start(tmp_path, issuer, upstream)
    try:
        writer = writer_of(gw)
        list_tables(gw, issuer, 25)
    finally:
        gw.stop()
    assert gw.proc.returncode == 0 and gone_within(writer, 1)
    records = [r for r in gw.records() if r["action"] == "dynamodb:ListTables"]
    assert len(records) == 25 and {r["outcome"] for r in records} == {"forwarded"}
    result = verify(gw.db_url, (gw.home / "keys" / "chain.key").read_bytes().strip())
    assert result.ok and result.notes == []  # the chain head was checkpointed when the writer stopped
    assert "Traceback" not in gw.log()


def test_a_gateway_killed_outright_leaves_no_writer_behind(tmp_path, issuer, upstream):
    gw = start(tmp_path, issuer, upstream)
    try:
        writer = writer_of(gw)
        list_tables(gw, issuer, 10)
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait()
        assert gone_within(writer, 20)  # it saw its gateway gone, wrote what it had, and stopped
    finally:
        gw.stop()
    assert len([r for r in gw.records() if r["action"] == "dynamodb:ListTables"]) == 10  # every answered call
    assert verify(gw.db_url, (gw.home / "keys" / "chain.key").read_bytes().strip()).ok


def test_when_the_writer_process_dies_calls_are_refused_and_the_gateway_says_so(tmp_path, issuer, upstream):
    gw = start(tmp_path, issuer, upstream)
    try:
        list_tables(gw, issuer, 3)
        writer = writer_of(gw)
        os.kill(writer, signal.SIGKILL)
        assert gone_within(writer, 5)
        ddb = agent(gw, issuer, "after", "dynamodb")
        deadline = time.monotonic() + 10
        while True:  # the gateway sees its writer gone at once; allow it a moment to read the end of file
            try:
                ddb.list_tables()
            except botocore.exceptions.ClientError as e:
                error = e.response
                break
            assert time.monotonic() < deadline, "calls are still answered without a writer"
            time.sleep(0.1)
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert error["Error"]["Code"] == "ServiceUnavailable" and "cannot record this call" in error["Error"]["Message"]
        for _ in range(3):  # every call from then on, each at once
            started = time.monotonic()
            with pytest.raises(botocore.exceptions.ClientError) as refused:
                ddb.list_tables()
            assert refused.value.response["Error"]["Code"] == "ServiceUnavailable"
            assert time.monotonic() - started < 5
        assert gw.proc.poll() is None  # the gateway runs on, refusing
        log = gw.log()
        assert log.count("the writer process") == 1 and "has ended (exit code -9)" in log and "Traceback" not in log
    finally:
        gw.stop()


@pytest.mark.skipif(bool(os.environ.get("AGENTGATE_STORE_WRITER")), reason="the suite runs with another store writer")
def test_by_default_the_writer_is_a_thread_of_the_gateway(tmp_path, issuer, upstream):
    gw = Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=upstream.url, aws_key=GATEWAY_KEY)
    gw.db_url = f"sqlite:///{gw.db_path}"
    gw.start()
    try:
        assert writers_under(gw.proc.pid) == []
        list_tables(gw, issuer, 5)
    finally:
        gw.stop()
    assert len([r for r in gw.records() if r["action"] == "dynamodb:ListTables"]) == 5
    assert verify(gw.db_url, (gw.home / "keys" / "chain.key").read_bytes().strip()).notes == []


def test_the_writer_process_is_python_without_mitmproxy(tmp_path):
    """It imports the store and nothing of the proxy: a small process."""
    code = ("import sys, addons.core.store_process; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mitmproxy', 'botocore', 'jmespath'}))")
    out = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.strip() == "[]"


def test_a_value_pickle_cannot_take_is_stored_as_the_thread_writer_stores_it(tmp_path):
    """A parameter value that cannot cross to the writer process (a function here) is kept in its
    JSON form, as the store keeps any value: the record is written, not refused."""
    import pickle

    import asyncio

    from addons.core.records import Record
    from addons.core.store import Store
    from addons.core.store_process import StoreProcess

    url = f"sqlite:///{tmp_path / 'a.db'}"
    Store(url).migrate()
    odd = Record(principal="odd", params={"Bucket": "b", "f": lambda: 0})
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(odd)
    plain = Record(principal="plain", params={"Bucket": "b"})

    async def main() -> None:
        store = StoreProcess(url)
        store.start()
        try:
            assert await store.write(odd) is True and await store.write(plain) is True
        finally:
            await asyncio.to_thread(store.close)

    asyncio.run(main())
    reader = Store(url)
    kept = reader.call(odd.id)["params"]
    assert kept["Bucket"] == "b" and kept["f"].startswith("<function test_a_value_pickle_cannot_take")
    assert reader.call(plain.id)["params"] == {"Bucket": "b"}


def test_messages_split_anywhere_on_the_way_are_read_whole():
    from addons.core.store_process import Frames, frame

    stream = b"".join(frame(m) for m in [("w", 1, {"a": "x" * 5000}), ("g", 1), ("v", 1, True)])
    for step in (1, 3, 4, 7, 4096, len(stream)):
        frames, got = Frames(), []
        for i in range(0, len(stream), step):
            got += frames.feed(stream[i:i + step])
        assert got == [("w", 1, {"a": "x" * 5000}), ("g", 1), ("v", 1, True)] and not frames.buffer


def test_under_workers_each_writer_process_names_itself_in_the_log(tmp_path, issuer, upstream):
    gw = start(tmp_path, issuer, upstream, workers=2)
    try:
        deadline = time.monotonic() + 20
        while True:  # the first process, then each worker with its writer
            writers = writers_under(gw.proc.pid)
            if len(writers) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        list_tables(gw, issuer, 4)
    finally:
        gw.stop()
    assert len(writers) >= 2, writers
    log = gw.log()
    for pid in writers:  # as every worker's own lines do
        assert re.search(rf"INFO \[{pid}\] agentgate\.store: store \S+: writer \S+ started", log), (pid, log[-2000:])


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_under_workers_a_worker_whose_writer_process_dies_is_started_again(tmp_path, issuer, upstream):
    gw = start(tmp_path, issuer, upstream, workers=2)
    try:
        deadline = time.monotonic() + 20
        while len(writers := writers_under(gw.proc.pid)) < 2:
            assert time.monotonic() < deadline, writers
            time.sleep(0.2)
        list_tables(gw, issuer, 3)
        writer = writers[0]
        worker = parent_of(writer)
        os.kill(writer, signal.SIGKILL)
        assert gone_within(writer, 5)
        deadline = time.monotonic() + 20
        while True:  # the worker stops, and the supervisor starts another, with a writer of its own
            now = writers_under(gw.proc.pid)
            if len(now) == 2 and writer not in now and gw.log().count("listening on") >= 3:
                break
            assert time.monotonic() < deadline, (now, gw.log()[-3000:])
            time.sleep(0.2)
        assert not alive(worker)
        for i in range(12):  # each agent on a connection of its own, which either worker may take: none refused
            ddb = agent(gw, issuer, f"after-{i}", "dynamodb")
            assert ddb.list_tables()["ResponseMetadata"]["HTTPStatusCode"] == 200
    finally:
        gw.stop()
    log = gw.log()
    assert (f"the writer process {writer} has ended (exit code -9)" in log
            and "stopping this worker, for its supervisor to start it again" in log), log[-3000:]
    assert re.search(rf"worker \d \(pid {worker}\) exited with 1; starting it again in \d+ s", log), log[-3000:]
    assert "Traceback" not in log
