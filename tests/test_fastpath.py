"""addons/fastpath.py: the table-driven hook dispatch behaves as mitmproxy's own (order, sub-add-ons,
sync and async hooks, errors, AddonHalt, ``update`` after flow events, add/remove), and both patches
step aside when mitmproxy's shape is not what they expect."""

from __future__ import annotations

import asyncio
import logging
import types
import typing

import pytest
from mitmproxy import exceptions, master, options
from mitmproxy.proxy import mode_servers
from mitmproxy.test import tflow

from addons import closing, fastpath, h2buffers, reads


class Recorder:
    def __init__(self, name: str, seen: list) -> None:
        self.name, self.seen = name, seen


class Sync(Recorder):
    def request(self, flow):
        self.seen.append((self.name, "request", flow.id))


class Async(Recorder):
    async def request(self, flow):
        await asyncio.sleep(0)
        self.seen.append((self.name, "request", flow.id))

    async def response(self, flow):
        self.seen.append((self.name, "response", flow.id))


class Raises(Recorder):
    def request(self, flow):
        self.seen.append((self.name, "request", flow.id))
        raise ValueError("broken add-on")


class Halts(Recorder):
    def response(self, flow):
        self.seen.append((self.name, "response", flow.id))
        raise exceptions.AddonHalt()


class Parent(Recorder):
    def __init__(self, name, seen, children) -> None:
        super().__init__(name, seen)
        self.addons = children

    def request(self, flow):
        self.seen.append((self.name, "request", flow.id))


class Updates(Recorder):
    def update(self, flows):
        self.seen.append((self.name, "update", flows[0].id))


class ModuleNamedLikeAHook(Recorder):
    request = types.ModuleType("request")  # `from x import request` in an add-on is not a hook


class ReturnsAwaitable(Recorder):
    def request(self, flow):  # a plain function returning a coroutine: awaited, as mitmproxy does
        async def later():
            self.seen.append((self.name, "request", flow.id))
        return later()


LOOP = asyncio.new_event_loop()


def build(precompute: bool, seen: list):
    m = master.Master(options.Options(), event_loop=LOOP)
    if precompute:
        assert fastpath.precompute_dispatch(m.addons)
    m.addons.add(
        Sync("a", seen), Async("b", seen), Raises("c", seen),
        Parent("p", seen, [Sync("p.1", seen), Raises("p.2", seen), Sync("p.3", seen)]),
        ModuleNamedLikeAHook("m", seen), ReturnsAwaitable("r", seen), Updates("u", seen),
        Halts("h", seen), Async("after-halt", seen),
    )
    return m


def run_events(m, flow) -> None:
    from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook

    async def events():
        await m.addons.handle_lifecycle(HttpRequestHook(flow))
        await m.addons.handle_lifecycle(HttpResponseHook(flow))

    LOOP.run_until_complete(events())


def test_same_calls_in_the_same_order_as_mitmproxy(caplog):
    flow = tflow.tflow(resp=True)
    theirs, ours = [], []
    with caplog.at_level(logging.ERROR):
        run_events(build(False, theirs), flow)
        their_errors = [r.getMessage() for r in caplog.records]
        caplog.clear()
        run_events(build(True, ours), flow)
        our_errors = [r.getMessage() for r in caplog.records]
    assert ours == theirs
    # what that order is: a raising add-on is logged and the next one runs; a raising sub-add-on
    # skips its siblings (mitmproxy guards each top-level add-on); AddonHalt ends the event
    assert [s[0] for s in ours if s[1] == "request"] == ["a", "b", "c", "p", "p.1", "p.2", "r", "after-halt"]
    assert [s[0] for s in ours if s[1] == "response"] == ["b", "h"]
    assert [s[0] for s in ours if s[1] == "update"] == ["u", "u"]
    assert our_errors == their_errors == ["Addon error: broken add-on", "Addon error: broken add-on"]


def test_added_and_removed_addons_are_seen():
    seen: list = []
    m = master.Master(options.Options(), event_loop=LOOP)
    assert fastpath.precompute_dispatch(m.addons)
    first = Sync("first", seen)
    m.addons.add(first)
    flow = tflow.tflow()
    from mitmproxy.proxy.layers.http import HttpRequestHook

    LOOP.run_until_complete(m.addons.handle_lifecycle(HttpRequestHook(flow)))
    m.addons.add(Async("second", seen))
    LOOP.run_until_complete(m.addons.handle_lifecycle(HttpRequestHook(flow)))
    m.addons.remove(first)
    LOOP.run_until_complete(m.addons.handle_lifecycle(HttpRequestHook(flow)))
    assert [s[0] for s in seen] == ["first", "first", "second", "second"]


def test_options_errors_still_propagate():
    class BadOption:
        def request(self, flow):
            raise exceptions.OptionsError("bad value")

    m = master.Master(options.Options(), event_loop=LOOP)
    fastpath.precompute_dispatch(m.addons)
    m.addons.add(BadOption())
    from mitmproxy.proxy.layers.http import HttpRequestHook

    with pytest.raises(exceptions.OptionsError):
        LOOP.run_until_complete(m.addons.handle_lifecycle(HttpRequestHook(tflow.tflow())))


def test_steps_aside_when_mitmproxy_changed(caplog):
    class OldManager:  # no handle_lifecycle, as if mitmproxy had renamed it
        chain: list = []

        async def trigger_event(self, event):
            pass

    manager = OldManager()
    with caplog.at_level(logging.DEBUG, logger="agentgate.fastpath"):
        assert fastpath.precompute_dispatch(manager) is False
    assert "AddonManager has no 'handle_lifecycle'" in caplog.text
    assert manager.trigger_event.__func__ is OldManager.trigger_event


def test_the_gateway_master_uses_it():
    from addons.gateway import GatewayMaster

    async def make():
        return GatewayMaster(options.Options())

    m = asyncio.run(make())
    assert m.dispatch_precomputed is True
    assert isinstance(m.addons._agentgate_dispatch, fastpath.Dispatch)


def test_reuse_port_steps_aside_when_the_listener_changed(monkeypatch, caplog):
    monkeypatch.setattr(mode_servers, "asyncio", types.SimpleNamespace())
    with caplog.at_level(logging.DEBUG, logger="agentgate.fastpath"):
        assert fastpath.reuse_port() is False
    assert "does not use asyncio.start_server" in caplog.text


def test_on_error_hears_of_each_hook_that_raised():
    seen: list = []
    failures: list = []
    m = master.Master(options.Options(), event_loop=LOOP)
    assert fastpath.precompute_dispatch(m.addons, on_error=lambda event, addon, e: failures.append(
        (event.name, addon.name, str(e))))
    m.addons.add(Sync("a", seen), Raises("c", seen), Parent("p", seen, [Raises("p.2", seen), Sync("p.3", seen)]))
    run_events(m, tflow.tflow(resp=True))
    assert failures == [("request", "c", "broken add-on"), ("request", "p", "broken add-on")]
    assert [s[0] for s in seen] == ["a", "c", "p", "p.2"]  # p.3 skipped, as mitmproxy does


LEAN = """
import sys, json
import addons.gateway
lean = {m: m in sys.modules for m in ("flask", "ldap3", "mitmproxy.addons.onboarding", "mitmproxy.addons.proxyauth")}
from mitmproxy.addons import proxyserver, tlsconfig
import mitmproxy.addons
names = sorted(type(a).__name__ for a in mitmproxy.addons.default_addons())
print(json.dumps({"lean": lean, "names": names, "same": mitmproxy.addons.proxyserver is proxyserver}))
"""
STOCK = """
import json, mitmproxy.addons
print(json.dumps(sorted(type(a).__name__ for a in mitmproxy.addons.default_addons())))
"""


def test_the_gateway_imports_only_the_add_ons_it_uses():
    """Importing the gateway leaves mitmproxy's other default add-ons (and Flask, ldap3) unimported;
    whoever asks the package for them later (mitmweb's master) gets them all, as from stock."""
    import json
    import subprocess
    import sys

    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True, check=True, cwd=root)
    got = json.loads(run.stdout)
    stock = json.loads(subprocess.run([sys.executable, "-c", STOCK], capture_output=True, text=True,
                                      check=True).stdout)
    assert got["lean"] == {"flask": False, "ldap3": False, "mitmproxy.addons.onboarding": False,
                           "mitmproxy.addons.proxyauth": False}
    assert got["names"] == stock and len(stock) > 25 and got["same"]


def test_option_reads_hand_out_values_that_cannot_change_as_they_are_and_copies_of_the_rest():
    import importlib

    from mitmproxy import optmanager

    importlib.import_module("addons.gateway")  # puts cheap_option_reads in place, as the gateway runs

    assert getattr(optmanager._Option.current, "_agentgate", False) is True
    opts = options.Options()
    opts.add_option("agentgate_test_int", int, 5, "an int")
    opts.add_option("agentgate_test_list", typing.Sequence[str], ["a"], "a list")
    assert opts.agentgate_test_int == 5 and opts.http2 is True and opts.listen_host == "" and opts.mode == ["regular"]
    opts.update(agentgate_test_int=7, listen_host="127.0.0.1")
    assert opts.agentgate_test_int == 7 and opts.listen_host == "127.0.0.1"
    changed = opts.agentgate_test_list
    changed.append("b")  # a mutable value is still a copy: changing it changes no option
    assert opts.agentgate_test_list == ["a"]
    opts.update(agentgate_test_list=["x", "y"])
    opts.agentgate_test_list.append("z")
    assert opts.agentgate_test_list == ["x", "y"]
    opts.reset()
    assert opts.agentgate_test_int == 5 and opts.listen_host == ""


def test_option_reads_step_aside_when_mitmproxy_changed(monkeypatch, caplog):
    from mitmproxy import optmanager

    class Option:  # as if mitmproxy's _Option no longer copied on read
        default = property(lambda self: None)

        def current(self):
            return self.value

    monkeypatch.setattr(optmanager, "_Option", Option)
    with caplog.at_level(logging.DEBUG, logger="agentgate.fastpath"):
        assert fastpath.cheap_option_reads() is False
    assert "not what cheap_option_reads expects" in caplog.text
    assert not hasattr(Option.current, "_agentgate")


@pytest.mark.parametrize("wrapper, words", [
    (closing, "connections closed from another task may stay open"),
    (reads, "connections are read 64 KiB at a time"),
    (h2buffers, "an HTTP/2 agent's slow download may be held whole in memory"),
], ids=["closing", "reads", "h2buffers"])
def test_a_wrapper_of_handle_connection_leaves_a_changed_mitmproxy_alone_with_its_error(monkeypatch, caplog,
                                                                                        wrapper, words):
    """closing.py, reads.py and h2buffers.py wrap mitmproxy's ConnectionHandler.handle_connection, each after
    ``fastpath.connection_handler`` checked its shape: another shape is left as it is, and each says
    in its own words what the gateway does without it."""
    from mitmproxy.proxy import server

    async def handle_connection(self, connection, extra=None):  # another shape
        pass

    monkeypatch.setattr(wrapper, "_installed", False)
    monkeypatch.setattr(server.ConnectionHandler, "handle_connection", handle_connection)
    with caplog.at_level(logging.ERROR, logger=wrapper.log.name):
        assert wrapper.install() is False
    assert server.ConnectionHandler.handle_connection is handle_connection
    assert words in caplog.text


# -- 7. header lookups through an index

def _stock_get_all(headers, name):
    """mitmproxy's Headers.get_all, as its source has it (a walk over every field)."""
    from mitmproxy.coretypes import multidict
    from mitmproxy.http import _always_bytes, _native

    return [_native(x) for x in multidict._MultiDict.get_all(headers, _always_bytes(name))]


def _stock(headers, op, name):
    values = _stock_get_all(headers, name)
    if op == "get_all":
        return values
    if op == "in":
        return bool(values)
    if op == "get":
        return ", ".join(values) if values else "absent"
    if not values:
        return KeyError
    return ", ".join(values)


def _quick(headers, op, name):
    if op == "get_all":
        return headers.get_all(name)
    if op == "in":
        return name in headers
    if op == "get":
        return headers.get(name, "absent")
    try:
        return headers[name]
    except KeyError:
        return KeyError


_NAMES = ["Host", "host", "HOST", "Content-Length", "content-length", "X-Amz-Date", "x-amz-date", "X-\u00c9t\u00e9",
          "x-\u00e9t\u00e9", "Set-Cookie", "", "te"]


def test_header_lookups_through_the_index_give_what_mitmproxy_walks_to_before_and_after_every_change():
    """Same values, folding and errors as mitmproxy's walk over the fields, for str and bytes names in
    any case, duplicates, non-ASCII names (bytes lower-cased as mitmproxy lower-cases them), and
    after each way headers change (set, delete, add, insert, set_all, fields replaced)."""
    import importlib
    import random

    from mitmproxy.http import Headers

    importlib.import_module("addons.gateway")  # puts quick_header_lookups in place, as the gateway runs
    assert getattr(Headers.get_all, "_agentgate", False) is True
    rng = random.Random(7)
    encode = lambda n: n.encode("utf-8", "surrogateescape")  # noqa: E731
    for _ in range(300):
        fields = [(encode(rng.choice(_NAMES)), encode(rng.choice(["a", "b, c", "\u00e9", "", "1"])))
                  for _ in range(rng.randrange(0, 8))]
        h = Headers(fields)
        for step in range(6):
            for name in _NAMES + ["absent"]:
                for key in (name, encode(name)):
                    for op in ("get_all", "in", "get", "[]"):
                        assert _quick(h, op, key) == _stock(h, op, key), (h.fields, op, key, step)
            change = rng.randrange(6)
            name = rng.choice(_NAMES)
            if change == 0:
                h[name] = rng.choice(["x", "y"])
            elif change == 1 and _stock_get_all(h, name):
                del h[name]
            elif change == 2:
                h.add(name, "z")
            elif change == 3:
                h.insert(0, name, "w")
            elif change == 4:
                h.set_all(name, ["p", "q"])
            else:
                h.fields = tuple(reversed(h.fields))
    with pytest.raises(TypeError):  # as mitmproxy: a name must be str or bytes
        Headers().get(3)
    with pytest.raises(TypeError):
        3 in Headers()  # noqa: B015


def test_header_lookups_step_aside_when_mitmproxy_changed(monkeypatch, caplog):
    from mitmproxy import http

    class Headers(http.Headers):  # as if mitmproxy's Headers no longer lower-cased names
        @staticmethod
        def _kconv(key):
            return key

        def get_all(self, name):
            name = http._always_bytes(name)
            return [http._native(x) for x in super().get_all(name)]

    monkeypatch.setattr(http, "Headers", Headers)
    with caplog.at_level(logging.DEBUG, logger="agentgate.fastpath"):
        assert fastpath.quick_header_lookups() is False
    assert "not what quick_header_lookups expects" in caplog.text
    assert not hasattr(Headers.get_all, "_agentgate")


# -- 8. stream contexts forked without a throwaway Server

def test_a_forked_context_shares_the_connections_and_copies_the_layers_without_making_a_server(monkeypatch):
    import importlib

    from mitmproxy import connection
    from mitmproxy.proxy import context

    importlib.import_module("addons.gateway")
    assert getattr(context.Context.fork, "_agentgate", False) is True
    client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0)
    ctx = context.Context(client, options.Options())
    ctx.layers = ["a layer"]
    made = []
    real_init = connection.Server.__init__
    monkeypatch.setattr(connection.Server, "__init__", lambda self, *a, **k: (made.append(1), real_init(self, *a, **k)))
    forked = ctx.fork()
    assert made == []  # mitmproxy's own fork made one, with a uuid4, and dropped it
    assert type(forked) is context.Context and vars(forked).keys() == vars(ctx).keys()
    assert forked.client is client and forked.options is ctx.options and forked.server is ctx.server
    assert forked.layers == ["a layer"] and forked.layers is not ctx.layers
    forked.layers.append("another")
    assert ctx.layers == ["a layer"]


def test_stream_contexts_step_aside_when_mitmproxy_changed(monkeypatch, caplog):
    from mitmproxy.proxy import context

    class Context(context.Context):  # as if mitmproxy's Context kept one more thing
        def __init__(self, client, options):
            super().__init__(client, options)
            self.more = []

        def fork(self):
            return Context(self.client, self.options)

    monkeypatch.setattr(context, "Context", Context)
    with caplog.at_level(logging.DEBUG, logger="agentgate.fastpath"):
        assert fastpath.light_stream_contexts() is False
    assert "not what light_stream_contexts expects" in caplog.text
    assert not hasattr(Context.fork, "_agentgate")


# -- 9. hook arguments and the watchdog's disarm

def test_hook_arguments_are_the_hooks_fields_and_disarm_does_what_mitmproxy_s_did():
    import dataclasses
    import importlib

    from mitmproxy import hooks
    from mitmproxy.proxy import server

    importlib.import_module("addons.gateway")
    assert getattr(hooks.Hook.args, "_agentgate", False) is True
    for name, cls in hooks.all_hooks.items():
        values = [object() for _ in dataclasses.fields(cls)]
        hook = cls(*values)
        assert hook.args() == values and hook.args() == values, name  # the second from the names looked up

    async def watched():
        dog = server.TimeoutWatchdog(60, lambda: None)
        assert dog.can_timeout.is_set() and dog.blocker == 0
        with dog.disarm():
            assert not dog.can_timeout.is_set() and dog.blocker == 1
            with dog.disarm():
                assert dog.blocker == 2
            assert dog.blocker == 1 and not dog.can_timeout.is_set()  # still held by the outer one
            before = dog.last_activity
        assert dog.blocker == 0 and dog.can_timeout.is_set() and dog.last_activity >= before
        with pytest.raises(ValueError):
            with dog.disarm():
                raise ValueError("a hook failed")
        assert dog.blocker == 0 and dog.can_timeout.is_set()  # restored, and the error not swallowed

    asyncio.run(watched())


def test_lighter_hooks_step_aside_when_mitmproxy_changed(monkeypatch, caplog):
    import contextlib

    from mitmproxy.proxy import server

    class Watchdog(server.TimeoutWatchdog):  # as if disarm did one more thing
        @contextlib.contextmanager
        def disarm(self):
            self.blocker += 1
            yield

    monkeypatch.setattr(server, "TimeoutWatchdog", Watchdog)
    from mitmproxy import hooks

    with caplog.at_level(logging.DEBUG, logger="agentgate.fastpath"):
        assert fastpath.lighter_hooks() is False
    assert "TimeoutWatchdog.disarm is not what lighter_hooks expects" in caplog.text
    assert not hasattr(Watchdog.disarm, "_agentgate")
    assert getattr(hooks.Hook.args, "_agentgate", False) is True  # the other part, whose shape is as expected


# -- 10. connection equality

def test_connections_compare_as_mitmproxy_compares_them_without_the_abc_s_check_for_its_own_classes(monkeypatch):
    import importlib

    from mitmproxy import connection

    importlib.import_module("addons.gateway")
    assert getattr(connection.Connection.__eq__, "_agentgate", False) is True
    client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0)
    server = connection.Server(address=("127.0.0.1", 3))
    twin = connection.Server(address=("127.0.0.1", 4))
    twin.id = server.id  # mitmproxy's equality is by id: a copy of a connection equals it
    checks = []
    real = type(connection.Connection).__instancecheck__
    monkeypatch.setattr(type(connection.Connection), "__instancecheck__",
                        lambda cls, other: (checks.append(cls), real(cls, other))[1])
    assert client == client and server == server and not (client != client)
    assert server == twin and twin == server and client != server and server != client
    assert checks == []  # a Client or a Server: no isinstance of the ABC

    class Relay(connection.Server):  # a subclass: mitmproxy's own comparison, as before
        pass

    relay = Relay(address=("127.0.0.1", 5))
    relay.id = server.id
    assert server == relay and relay == server and client != relay
    assert client != "a string" and client != None  # noqa: E711 - __eq__ with what is not a connection
    assert checks  # those went through mitmproxy's own comparison
    assert len({client, server, twin}) == 2  # hashing is mitmproxy's (by id), unchanged


def test_connection_equality_steps_aside_when_mitmproxy_changed(monkeypatch, caplog):
    from mitmproxy import connection

    class Connection(connection.Connection):  # as if mitmproxy compared connections otherwise
        def __eq__(self, other):
            return isinstance(other, Connection) and self.id == other.id and self.state == other.state

        __hash__ = connection.Connection.__hash__

    monkeypatch.setattr(connection, "Connection", Connection)
    with caplog.at_level(logging.DEBUG, logger="agentgate.fastpath"):
        assert fastpath.identity_connection_eq() is False
    assert "Connection.__eq__ is not what identity_connection_eq expects" in caplog.text
    assert not hasattr(Connection.__eq__, "_agentgate")
