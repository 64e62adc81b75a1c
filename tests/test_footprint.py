"""What a running gateway holds in memory: a store already at the current schema is opened
without importing Alembic (some 20 MB), and the schema revision the code expects is Alembic's head."""

from __future__ import annotations

import json
import subprocess
import sys

from addons.core.store import HEAD_REVISION, Store, head_revision


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
    url = f"sqlite:///{tmp_path / 'b.db'}"
    store = Store(url)
    store.migrate()
    with store.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("UPDATE alembic_version SET version_num = '0002_approvals'"))
        conn.execute(text("ALTER TABLE calls DROP COLUMN body_note"))
        conn.execute(text("ALTER TABLE calls DROP COLUMN masked"))
    store.engine.dispose()
    Store(url).migrate()
    with Store(url).engine.connect() as conn:
        from sqlalchemy import inspect, text

        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
        assert {"masked", "body_note"} <= {c["name"] for c in inspect(conn).get_columns("calls")}
