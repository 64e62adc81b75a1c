"""What a running gateway holds in memory: a store already at the current schema is opened
without importing Alembic (some 20 MB), and the schema revision the code expects is Alembic's head;
what start-up built is out of the cycle collector's sight once the gateway runs; a call whose
record has been written leaves nothing behind for the cycle collector (its flow is freed the
moment the last hook lets go of it, with the collector off)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import weakref

import pytest

from addons.core.records import Record
from addons.core.store import HEAD_REVISION, Store, head_revision
from addons.core.store_process import StoreProcess


def test_the_expected_revision_is_the_newest_migration():
    assert HEAD_REVISION == head_revision()


def test_an_up_to_date_store_opens_without_alembic(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    Store(url).migrate()  # creates it (Alembic runs here, in this process)
    code = f"""
import json, sys
from addons.core.store import Store
from addons import gateway, chain  # what `agentgate run` imports
s = Store({url!r})
s.migrate()
s._check_schema()
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic')))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_an_old_store_is_still_migrated(tmp_path):
    from alembic import command
    from sqlalchemy import inspect, text

    from addons.core.store import alembic_config

    url = f"sqlite:///{tmp_path / 'b.db'}"
    command.upgrade(alembic_config(url), "0002_approvals")
    Store(url).migrate()
    with Store(url).engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
        assert {"masked", "body_note"} <= {c["name"] for c in inspect(conn).get_columns("calls")}
        assert "approval_events" in inspect(conn).get_table_names()


def test_start_up_objects_are_frozen_out_of_the_cycle_collectors_walks():
    code = """
import gc, json
from addons import gateway
gateway._warm_up()  # botocore's indexes, as `agentgate run` builds them before serving
built = len(gc.get_objects())
gateway.settle_heap()
print(json.dumps({"built": built, "frozen": gc.get_freeze_count(), "walked": len(gc.get_objects())}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["built"] > 50_000
    assert out["frozen"] >= out["built"] * 0.9  # (a few start-up leftovers were garbage and are freed)
    assert out["walked"] < 1_000  # what a full collection walks from now on: only what comes after


def watching(thing: object):
    """A ``gone`` callable that holds ``thing`` as the recorder's holds the call's flow."""
    return lambda: thing is None


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_written_call_is_freed_by_reference_counting(tmp_path, writer):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    Store(url).migrate()
    store = (StoreProcess if writer == "process" else Store)(url)
    store.start()

    class Flow:
        pass

    async def one_call() -> weakref.ref:
        flow = Flow()
        committed = await store.write(Record(id="c1", outcome="forwarded"),
                                      if_gone={"outcome": "client_gone"}, gone=watching(flow))
        assert committed is True
        return weakref.ref(flow)

    gc.disable()
    try:
        flow = asyncio.run(one_call())
        assert flow() is None, "the call's flow is kept alive by a reference cycle until the collector runs"
    finally:
        gc.enable()
        store.close()


def test_the_policy_check_of_a_version_in_force_leaves_the_gateways_memory_as_it_was(tmp_path):
    """The gateway checks each policy version it puts in force (and logs what the check finds); the
    check reads IAM's data and botocore's models of the services the rules name: some 30 MB, and
    160,000 objects for every full collection to walk. It runs in a process of its own: the gateway's heap is what it was before."""
    (tmp_path / "p.yaml").write_text("version: 1\nrules:\n  - {id: reads, access_level: [Read], decision: allow}\n"
                                     "  - {id: no-invoke, action: lambda:Invoke, decision: deny}\n")
    code = f"""
import gc, json, logging
from addons import gateway
from addons.core.policy import PolicyStore
from addons.policy import check_in_background
gateway._warm_up()
gateway.settle_heap()
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger("agentgate.policy").addHandler(Keep())
before = len(gc.get_objects())
threads = []
PolicyStore({str(tmp_path)!r}, on_version=lambda v: threads.append(check_in_background(v)))
threads[0].join(300)
gc.collect()
print(json.dumps({{"before": before, "after": len(gc.get_objects()), "lines": lines}}))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert any("rule no-invoke: lambda:Invoke is an API operation's name" in line
               for line in out["lines"]), out["lines"]  # the check ran, and the gateway logged what it found
    assert out["after"] - out["before"] < 5_000  # what it read (IAM's data, botocore's) is not in the gateway's heap


def test_a_gateway_leaves_out_what_it_never_uses():
    """What `agentgate run` imports: not httpx's command line (rich's console, pygments' lexers:
    about 3 MB, imported by httpx whenever those are installed), not boto3 (s3transfer with it:
    about 2 MB; the gateway's STS client is botocore's); httpx itself works as before."""
    code = """
import json, sys
from addons import gateway, chain  # what `agentgate run` imports
from addons.core import identity, credentials
from addons import notify
import httpx
with httpx.Client() as client:
    pass
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {"rich", "pygments", "boto3", "s3transfer"})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_sts_client_lets_go_of_the_data_botocore_read_to_build_it():
    """botocore's loader keeps what it read to build a client (endpoints.json's ~8 MB of objects)
    for as long as the client lives; the gateway's STS client keeps under 2 MB, and still works:
    test_credentials.py's grants go through such clients."""
    code = """
import gc, json, tracemalloc
from addons import gateway, chain
from addons.core.credentials import CredentialBroker
broker = CredentialBroker(endpoint_url="http://127.0.0.1:9")
gc.collect()
tracemalloc.start()
broker._sts("eu-west-1")
gc.collect()
print(json.dumps(tracemalloc.get_traced_memory()[0]))
"""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert json.loads(out.stdout) < 2_000_000
