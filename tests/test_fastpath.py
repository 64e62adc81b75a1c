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
