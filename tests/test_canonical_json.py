"""chain.canonical_json (the store's write path, orjson where it gives json's bytes) against
chain.canonical (what verify recomputes, json): the same bytes for every value a record can hold,
including the floats and integers where orjson alone would differ; and records holding them verify
after a round trip through the store."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from addons.core import chain
from addons.core.records import Record
from addons.core.store import Store, verify

def reference(body: dict) -> bytes:
    """The canonical encoding as chain's docstring defines it (what verify computes)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text() | st.binary(max_size=20))
values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20)


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=12), values, max_size=8))
@example({"f": 1.5e-05, "g": 1.5e-07, "h": 1e-09, "i": 1e-10, "j": 1e16, "k": 1e-4, "l": -0.0})
@example({"big": 2**64, "neg": -(2**63) - 1, "ok": 2**63 - 1})
@example({"s": "\x00\x1f\x7f\u2028\u2029\"\\/é😀", "t": "1e-5, 0.00001", "u": [0.00001]})
@example({"é": 1, "e": 2, "😀": 3, "\uffff": 4, "E": 5})
@example({"ua": "agentgate-loadgen", "f": -1.2345678901234567e-05, "l": [1, -2.2250738585072014e-08], "g": 9.5e-06})
def test_the_fast_encoding_is_the_canonical_one(body: dict) -> None:
    clean = chain.jsonable(body)
    assert chain.canonical_json(clean) == reference(clean)
    assert json.loads(chain.canonical_json(clean)) == clean


@given(st.floats(allow_nan=False, allow_infinity=False))
@settings(max_examples=2000)
def test_every_float_is_written_as_json_writes_it(x: float) -> None:
    assert chain.canonical_json({"x": x, "y": [x]}) == reference({"x": x, "y": [x]})


def test_json_columns_read_back_the_same_values() -> None:
    for value in ({"a": [1, 2.5e-07, "é\x00"], "b": None}, [2**70, 1e300], "plain", 0.1):
        assert json.loads(chain.json_text(value)) == value


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_records_with_awkward_numbers_verify_after_the_store(db: str, tmp_path) -> None:
    if db == "sqlite":
        url = f"sqlite:///{tmp_path / 'a.db'}"
    else:
        from tests.support.postgres import shared_server

        url = shared_server().fresh_database()
    store = Store(url, chain_key=b"k" * 32, checkpoint_every=3600)
    store.migrate()
    store.start()
    try:
        for params in ({"Value": 1.5e-05}, {"Value": 2.5e-07, "n": 2**64}, {"Value": 0.1, "s": "é\u2028"},
                       {"Values": [1e16, -0.0, 1e-10, 123456.789]}):
            store.write_sync(Record(principal="agent-1", action="cloudwatch:PutMetricData", decision="allow",
                                    params=params, latency_ms=1e-05))
    finally:
        store.close()
    result = verify(url, b"k" * 32)
    assert result.ok, result.problems
    assert result.records == 4
