"""Approvals written straight into a store, as test data: each row with the approval event
agentgate appends when it writes one (``Approvals._event``), so that the store verifies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import insert

from addons.core.approvals import Approvals
from addons.core.models import Approval as ApprovalRow
from addons.core.store import Store


def insert_approvals(url: str, rows: Iterable[Mapping[str, Any]], *, chain_key: bytes | None = None) -> None:
    store = Store(url, chain_key=chain_key)
    approvals = Approvals(store)
    try:
        with approvals._changing() as conn:  # as the gateway does: each event's head logged once committed
            for row in rows:
                conn.execute(insert(ApprovalRow), [dict(row)])
                approvals._event(conn, row["id"], "requested", row["requested"], actor=row["principal"],
                                 channel="test")
    finally:
        store.engine.dispose()
