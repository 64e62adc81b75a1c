"""An agentgate home for command tests: AGENTGATE_HOME set, a known chain key, and no settings
leaking in from the environment (the ``home`` fixture in tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

CHAIN_KEY = b"chain-key-for-tests-0123456789"


def make_home(path: Path, monkeypatch) -> Path:
    for name in list(os.environ):
        if name.startswith("AGENTGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AGENTGATE_HOME", str(path))
    (path / "keys").mkdir()
    (path / "keys" / "chain.key").write_bytes(CHAIN_KEY)
    return path
