"""Where the gateway reaches into mitmproxy's private API, all in one place, each with a fallback.

1. Hook dispatch. mitmproxy's ``AddonManager.trigger_event`` walks every add-on on every event,
   with a generator, a context manager and a ``getattr`` per add-on, then fires an ``update``
   event after each flow event. ``precompute_dispatch(manager)`` replaces both methods on that one
   manager with versions that look up, once per event name, the few hook functions that exist, and
   skip ``update`` when no add-on has it. Behaviour is mitmproxy's: chain order, sub-add-ons,
   sync and async hooks, an add-on's exception logged and the next add-on still called,
   ``AddonHalt`` stopping the event; plus an ``on_error`` callback where the gateway answers a
   flow whose stage raised with an error (a stage that fails must not let the call go on). The table is rebuilt whenever an add-on is added or removed.
2. ``SO_REUSEPORT`` on the proxy's listening socket, so that several gateway processes
   (``agentgate run --workers N``) share one port and the kernel spreads connections over them.
   mitmproxy has no option for it.

3. Option reads. mitmproxy hands out a deep copy of an option's value on every read
   (``_Option.current``), also of an int, and its HTTP layer (and the gateway's limits) read a
   few options on every request. ``cheap_option_reads()`` returns values that cannot be changed
   in place (ints, strings, None, ...) as they are, and still copies the rest (lists, dicts).

4. Lean imports. ``mitmproxy.master`` imports the ``mitmproxy.addons`` package, whose
   ``__init__`` imports all ~40 default add-ons and what they need (Flask for the onboarding app,
   ldap3 for proxy auth, pyparsing for flow filters, ...): ~14 MB of memory per process that a
   gateway never uses. ``lean_addon_imports()``, called before mitmproxy's master is imported,
   puts the package in ``sys.modules`` without running its ``__init__``, so that each add-on
   module is imported only when asked for (``from mitmproxy.addons import proxyserver``); the
   first use of anything else from the package (``default_addons()``, as mitmweb's master calls
   it) runs the real ``__init__`` then.

5. The connection handler's read loop. ``addons/closing.py``, ``addons/reads.py`` and
   ``addons/h2buffers.py`` each wrap ``ConnectionHandler.handle_connection``;
   ``connection_handler(fields)`` is the shape check they rely on (a coroutine method of (self,
   connection) whose ``ConnectionIO`` has ``fields``), and ``wrap_readers(prepare)`` the wrapper
   the last two share: it hands each connection's asyncio reader to ``prepare`` first.

6. httpx's command line. ``httpx`` imports its command-line module whenever rich, click and
   pygments are installed (the gateway's CLI needs the first two): about 3 MB of a gateway's memory
   that it never uses. ``no_httpx_command_line()`` marks that one module as not importable before
   httpx is imported (None in ``sys.modules``, which httpx's own ``try: from ._main import main``
   takes as its command line not installed); everything else of httpx is as it is.

7. Header lookups. mitmproxy's ``Headers`` find a field by walking all of them, lower-casing each
   name, on every lookup (``headers.get("content-length")`` also raises and catches a KeyError when
   the field is absent), and mitmproxy's HTTP/1 layer alone looks up a request's and a response's
   headers a dozen times (framing, validation), the gateway's stages more. ``quick_header_lookups()``
   makes ``get``, ``[]``, ``in`` and ``get_all`` read an index of the fields by lower-case name,
   built on the first lookup and kept for as long as ``fields`` is the same tuple (every change
   replaces it). Same values, same errors.

8. Stream contexts. mitmproxy's ``Context.fork`` (once per HTTP request) builds a whole ``Context``,
   whose ``__init__`` makes a ``Server`` connection (some twenty fields, each set through
   ``Connection.__setattr__``, and a ``uuid4`` id) that ``fork`` throws away at once.
   ``light_stream_contexts()`` forks without it.

9. Around each hook (four or more per HTTP request), mitmproxy's ``Hook.args`` walks
   ``dataclasses.fields`` and the connection's ``TimeoutWatchdog.disarm`` is a generator-based
   context manager. ``lighter_hooks()`` looks each hook class's field names up once and makes
   ``disarm`` a plain context manager doing the same.

10. Connection equality. mitmproxy's layers compare connections with ``==`` some twenty times per
   HTTP request (``event.connection == self.conn``: a connection with itself or with the other one), and
   ``Connection.__eq__`` first asks ``isinstance`` of an ABC (``Connection``'s metaclass is
   ``ABCMeta``, so each check goes through ``ABCMeta.__instancecheck__``).
   ``identity_connection_eq()`` answers a connection compared with itself at once (True, as the
   id comparison would), compares a ``Client`` or ``Server`` (exactly those classes) by id without
   the ABC's check, and leaves every other comparison to mitmproxy's ``__eq__``.

All check the shape of what they patch first; if mitmproxy has changed, they leave it alone, log
why at debug level and return False, and the gateway runs on mitmproxy's own code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import sys
import types
from typing import Any

log = logging.getLogger("agentgate.fastpath")


def _source(f: Any) -> str:
    """The source of ``f`` as ``inspect`` finds it; "" when there is none (None, a built-in, no file):
    what each patch below reads to check that mitmproxy's code is the shape it expects."""
    try:
        return inspect.getsource(f)
    except (OSError, TypeError):
        return ""


def _supported(manager: Any) -> str | None:
    """Why the dispatch table cannot be used with ``manager``, or None when it can."""
    try:
        from mitmproxy import addonmanager, exceptions, flow, hooks
    except ImportError as e:  # pragma: no cover
        return f"mitmproxy layout changed ({e})"
    for name in ("chain", "trigger_event", "handle_lifecycle", "add", "remove", "register"):
        if not hasattr(manager, name):
            return f"AddonManager has no {name!r}"
    for name in ("AddonHalt", "OptionsError"):
        if not hasattr(exceptions, name):
            return f"mitmproxy.exceptions has no {name!r}"
    if not hasattr(hooks, "UpdateHook") or not hasattr(hooks.Hook, "args") or not hasattr(flow, "Flow"):
        return "mitmproxy.hooks changed"
    if not hasattr(addonmanager, "traverse"):
        return "mitmproxy.addonmanager has no traverse()"
    return None


class Dispatch:
    """A per-event-name table of (addon, hook function, is coroutine function), in chain order."""

    def __init__(self, manager: Any, on_error: Any = None) -> None:
        from mitmproxy import addonmanager, exceptions, flow, hooks

        self.manager = manager
        self.on_error = on_error  # (event, addon, exception) after an add-on's hook raised
        self._traverse = addonmanager.traverse
        self._halt = exceptions.AddonHalt
        self._options_error = exceptions.OptionsError
        self._update = hooks.UpdateHook
        self._flow = flow.Flow
        self._not_callable = exceptions.AddonManagerError
        self.table: dict[str, tuple[tuple[Any, Any, bool], ...]] = {}

    def clear(self) -> None:
        self.table = {}

    def hooks(self, name: str) -> tuple[tuple[Any, Any, bool], ...]:
        found = self.table.get(name)
        if found is None:
            entries = []
            for top in self.manager.chain:
                for addon in self._traverse([top]):
                    func = getattr(addon, name, None)
                    if func is None or isinstance(func, types.ModuleType):
                        continue  # a module imported under a hook's name is not a hook (as mitmproxy)
                    if not callable(func):
                        raise self._not_callable(f"Addon handler {name} ({addon}) not callable")
                    entries.append((top, func, inspect.iscoroutinefunction(func)))
            found = self.table[name] = tuple(entries)
        return found

    async def trigger_event(self, event: Any) -> None:
        entries = self.hooks(event.name)
        if not entries:
            return
        args = event.args()  # each hook class's field names looked up once (lighter_hooks, 9. above)
        failed = None  # a top-level add-on whose hook raised: its sub-add-ons are skipped, as mitmproxy does
        for top, func, is_coroutine in entries:
            if top is failed:
                continue
            try:
                if is_coroutine:
                    await func(*args)
                else:
                    res = func(*args)
                    if res is not None and inspect.isawaitable(res):
                        await res
            except self._halt:
                return
            except self._options_error:
                raise
            except Exception as e:
                failed = top
                log_addon_error(e)
                if self.on_error is not None:
                    self.on_error(event, top, e)

    async def handle_lifecycle(self, event: Any) -> None:
        await self.trigger_event(event)
        if self.hooks("update"):  # mitmproxy follows each flow event with ``update``
            message = event.args()[0]
            if isinstance(message, self._flow):
                await self.trigger_event(self._update([message]))


def log_addon_error(e: BaseException) -> None:
    """Log an add-on's exception the way mitmproxy's ``safecall`` does."""
    logging.getLogger("mitmproxy.addonmanager").error(
        f"Addon error: {e}", exc_info=(type(e), e, e.__traceback__))


def precompute_dispatch(manager: Any, on_error: Any = None) -> bool:
    """Give ``manager`` (a master's ``AddonManager``) the table-driven dispatch. True when done.
    ``on_error(event, addon, exception)`` is called after an add-on's hook raised (and was logged),
    before the next add-on's hook runs: where the gateway fails the flow closed."""
    why = _supported(manager)
    if why is not None:
        log.debug("hook dispatch left to mitmproxy: %s", why)
        return False
    if isinstance(getattr(manager, "_agentgate_dispatch", None), Dispatch):
        return True
    dispatch = Dispatch(manager, on_error)
    add, remove = manager.add, manager.remove

    @functools.wraps(add)
    def add_and_clear(*addons: Any) -> None:
        try:
            add(*addons)
        finally:
            dispatch.clear()

    @functools.wraps(remove)
    def remove_and_clear(addon: Any) -> None:
        try:
            remove(addon)
        finally:
            dispatch.clear()

    manager.add = add_and_clear
    manager.remove = remove_and_clear
    manager.trigger_event = dispatch.trigger_event
    manager.handle_lifecycle = dispatch.handle_lifecycle
    manager._agentgate_dispatch = dispatch
    return True


class _ReusePortAsyncio(types.ModuleType):
    """``asyncio`` as mitmproxy's mode servers see it, with ``start_server`` binding SO_REUSEPORT."""

    def __init__(self) -> None:
        super().__init__("asyncio")
        self.start_server = functools.partial(asyncio.start_server, reuse_port=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


def connection_handler(fields: tuple[str, ...]) -> tuple[Any, Any, str | None]:
    """mitmproxy's ``ConnectionHandler`` and its ``handle_connection``, for a wrapper written
    against their shape: a coroutine method taking (self, connection), whose transports are
    ``ConnectionIO``s with ``fields``. ``(None, None, what changed)`` when they are not that."""
    try:
        from mitmproxy.proxy import server
    except ImportError as e:
        return None, None, f"layout changed: {e}"
    handler = getattr(server, "ConnectionHandler", None)
    original = getattr(handler, "handle_connection", None)
    io = getattr(server, "ConnectionIO", None)
    if (original is None or not inspect.iscoroutinefunction(original) or io is None
            or not set(fields) <= set(getattr(io, "__annotations__", {}))
            or list(inspect.signature(original).parameters) != ["self", "connection"]):
        return None, None, "ConnectionHandler changed"
    return handler, original, None


def wrap_readers(prepare: Any, shape_changed: Any = None) -> str | None:
    """Wrap ``ConnectionHandler.handle_connection`` (5. above) so that ``prepare(handler,
    connection, reader)`` is given each connection's asyncio reader before mitmproxy reads from it
    (not mitmproxy_rs's streams: UDP, local and WireGuard modes). None once in place; else what
    changed in mitmproxy (``shape_changed()`` adds a wrapper's own checks), and nothing is wrapped."""
    handler, original, changed = connection_handler(("reader",))
    if changed is None and shape_changed is not None:
        changed = shape_changed()
    if changed is not None:
        return changed

    @functools.wraps(original)
    async def handle_connection(self, connection) -> None:
        reader = getattr(self.transports.get(connection), "reader", None)
        if type(reader) is asyncio.StreamReader:
            prepare(self, connection, reader)
        await original(self, connection)

    handler.handle_connection = handle_connection
    return None


def reuse_port() -> bool:
    """Make the proxy's TCP listeners bind with SO_REUSEPORT (this process only). True when done."""
    import socket

    if not hasattr(socket, "SO_REUSEPORT"):
        log.debug("SO_REUSEPORT is not available on %s", sys.platform)
        return False
    try:
        from mitmproxy.proxy import mode_servers
    except ImportError as e:  # pragma: no cover
        log.debug("mitmproxy layout changed (%s)", e)
        return False
    if getattr(mode_servers, "asyncio", None) is not asyncio:
        if isinstance(getattr(mode_servers, "asyncio", None), _ReusePortAsyncio):
            return True
        log.debug("mitmproxy's mode_servers does not use asyncio.start_server as expected")
        return False
    src = _source(getattr(getattr(mode_servers, "AsyncioServerInstance", None), "listen", None))
    if "asyncio.start_server(" not in src:
        log.debug("mitmproxy's AsyncioServerInstance.listen no longer calls asyncio.start_server")
        return False
    mode_servers.asyncio = _ReusePortAsyncio()
    return True


def lean_addon_imports() -> bool:
    """Make ``mitmproxy.addons`` a package whose ``__init__`` runs only when something other than
    a submodule is asked of it (3. above). True when in place; False when the package is imported
    already or cannot be found."""
    if "mitmproxy.addons" in sys.modules:
        return False
    import importlib
    import importlib.util

    try:
        spec = importlib.util.find_spec("mitmproxy.addons")
    except (ImportError, ValueError) as e:  # pragma: no cover
        log.debug("mitmproxy.addons not found: %s", e)
        return False
    if spec is None or not spec.submodule_search_locations or not spec.origin or spec.loader is None:
        log.debug("mitmproxy.addons is not a package on disk; imported as it is")
        return False
    package = importlib.util.module_from_spec(spec)  # __path__, __spec__, __file__: submodules import

    def __getattr__(name: str) -> Any:  # noqa: N807 - PEP 562
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"mitmproxy.addons.{name}") is not None:  # `from mitmproxy.addons import x`
            return importlib.import_module(f"mitmproxy.addons.{name}")
        del package.__dict__["__getattr__"]
        spec.loader.exec_module(package)  # the real __init__, once: every default add-on
        return getattr(package, name)

    package.__getattr__ = __getattr__
    sys.modules["mitmproxy.addons"] = package
    import mitmproxy

    mitmproxy.addons = package
    return True


def no_httpx_command_line() -> bool:
    """Keep httpx's command-line module (rich's console, pygments' lexers) out of this process (6.
    above). True when in place; False when httpx is imported already."""
    if "httpx" in sys.modules:
        return False
    sys.modules.setdefault("httpx._main", None)
    return True


_IMMUTABLE = frozenset({int, float, bool, str, bytes, type(None)})


def cheap_option_reads() -> bool:
    """Make reading an option whose value cannot be changed in place return it without the deep
    copy mitmproxy's ``_Option.current`` makes of every value (3. above). True when in place."""
    try:
        from mitmproxy import optmanager
    except ImportError as e:  # pragma: no cover
        log.debug("mitmproxy layout changed (%s)", e)
        return False
    option, unset = getattr(optmanager, "_Option", None), getattr(optmanager, "unset", None)
    current = getattr(option, "current", None)
    if getattr(current, "_agentgate", False):
        return True
    src = _source(current)
    if unset is None or "copy.deepcopy(v)" not in src or "self.value is unset" not in src \
            or not isinstance(getattr(option, "default", None), property):
        log.debug("mitmproxy's _Option.current is not what cheap_option_reads expects")
        return False
    deepcopy = optmanager.copy.deepcopy

    def cheap_current(self: Any) -> Any:
        v = self._default if self.value is unset else self.value
        return v if type(v) in _IMMUTABLE else deepcopy(v)

    cheap_current._agentgate = True
    option.current = cheap_current
    return True


_HEADER_NAMES: dict[Any, bytes] = {}  # a header name as given (str or bytes) -> its lower-case bytes
_INDEX = "_agentgate_index"


def _header_key(name: Any) -> bytes:
    key = _HEADER_NAMES.get(name)
    if key is None:
        if isinstance(name, str):
            key = name.encode("utf-8", "surrogateescape").lower()
        elif isinstance(name, bytes):
            key = name.lower()
        else:
            raise TypeError(f"Expected str or bytes, but got {type(name).__name__}.")
        if len(_HEADER_NAMES) >= 4096:
            _HEADER_NAMES.clear()
        _HEADER_NAMES[name] = key
    return key


def _header_index(headers: Any) -> dict[bytes, tuple[bytes, ...]]:
    """A ``Headers``' values by lower-case name, kept with the ``fields`` tuple it was built from
    (which every change replaces): valid while ``fields`` is that very tuple."""
    fields = headers.fields
    index: dict[bytes, tuple[bytes, ...]] = {}
    for k, v in fields:
        k = k.lower()
        got = index.get(k)
        index[k] = (v,) if got is None else (*got, v)
    headers.__dict__[_INDEX] = (fields, index)
    return index


def quick_header_lookups() -> bool:
    """Look header fields up by name through an index instead of a walk over every field (7. above).
    True when in place."""
    try:
        from mitmproxy import http
        from mitmproxy.coretypes import multidict
    except ImportError as e:  # pragma: no cover
        log.debug("mitmproxy layout changed (%s)", e)
        return False
    headers = getattr(http, "Headers", None)
    if getattr(getattr(headers, "get_all", None), "_agentgate", False):
        return True
    kconv, get_all, reduce = (_source(getattr(headers, n, None)) for n in ("_kconv", "get_all", "_reduce_values"))
    getitem = _source(multidict._MultiDict.__getitem__)
    if ("return key.lower()" not in kconv or "_always_bytes(name)" not in get_all or "_native(x)" not in get_all
            or "self.get_all(key)" not in getitem or '", ".join(values)' not in reduce
            or "__dict__" not in dir(headers()) or headers.__getitem__ is not multidict._MultiDict.__getitem__
            or "__contains__" in vars(headers) or "get" in vars(headers) or "__contains__" in vars(multidict._MultiDict)):
        log.debug("mitmproxy's Headers are not what quick_header_lookups expects")
        return False

    names, index_of = _HEADER_NAMES, _header_index

    def values(self: Any, name: Any) -> tuple[bytes, ...]:
        kept = self.__dict__.get(_INDEX)
        index = kept[1] if kept is not None and kept[0] is self.fields else index_of(self)
        return index.get(names.get(name) or _header_key(name), ())

    def get_all(self: Any, name: Any) -> list[str]:
        return [v.decode("utf-8", "surrogateescape") for v in values(self, name)]

    def folded(found: tuple[bytes, ...]) -> str:  # as mitmproxy's Headers fold a repeated field
        if len(found) == 1:
            return found[0].decode("utf-8", "surrogateescape")
        return ", ".join(v.decode("utf-8", "surrogateescape") for v in found)

    def getitem(self: Any, key: Any) -> str:
        found = values(self, key)
        if not found:
            raise KeyError(key)
        return folded(found)

    def get(self: Any, key: Any, default: Any = None) -> Any:
        found = values(self, key)
        return folded(found) if found else default

    def contains(self: Any, key: Any) -> bool:
        return bool(values(self, key))

    for f in (get_all, getitem, get, contains):
        f._agentgate = True
    headers.get_all, headers.__getitem__, headers.get, headers.__contains__ = get_all, getitem, get, contains
    return True


def light_stream_contexts() -> bool:
    """Fork a stream's context without the ``Server`` that ``Context.__init__`` makes and ``fork``
    throws away (8. above). True when in place."""
    try:
        from mitmproxy import connection, options
        from mitmproxy.proxy import context
    except ImportError as e:  # pragma: no cover
        log.debug("mitmproxy layout changed (%s)", e)
        return False
    cls = getattr(context, "Context", None)
    if getattr(getattr(cls, "fork", None), "_agentgate", False):
        return True
    try:
        src = inspect.getsource(cls.fork)
        probe = cls(connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0),
                    options.Options())
    except Exception as e:  # noqa: BLE001 - any change of shape: leave mitmproxy's own
        log.debug("mitmproxy's Context cannot be probed (%s)", e)
        return False
    if (set(vars(probe)) != {"client", "options", "server", "layers"} or hasattr(cls, "__slots__")
            or "ret.server = self.server" not in src or "ret.layers = self.layers.copy()" not in src):
        log.debug("mitmproxy's Context is not what light_stream_contexts expects")
        return False
    new = object.__new__

    def fork(self: Any) -> Any:
        ret = new(cls)
        ret.client, ret.options, ret.server, ret.layers = self.client, self.options, self.server, self.layers.copy()
        return ret

    fork._agentgate = True
    cls.fork = fork
    return True


class _Disarmed:
    """What mitmproxy's ``TimeoutWatchdog.disarm`` does, as a plain context manager."""

    __slots__ = ("watchdog",)

    def __init__(self, watchdog: Any) -> None:
        self.watchdog = watchdog

    def __enter__(self) -> None:
        w = self.watchdog
        w.can_timeout.clear()
        w.blocker += 1

    def __exit__(self, *exc: Any) -> None:
        w = self.watchdog
        w.blocker -= 1
        if w.blocker == 0:
            w.register_activity()
            w.can_timeout.set()


def lighter_hooks() -> bool:
    """``Hook.args`` by field names looked up once per hook class, ``TimeoutWatchdog.disarm`` as a
    plain context manager (9. above), each where mitmproxy's is as expected. True when both are in
    place."""
    try:
        from mitmproxy import hooks
        from mitmproxy.proxy import server
    except ImportError as e:  # pragma: no cover
        log.debug("mitmproxy layout changed (%s)", e)
        return False
    hook, watchdog = getattr(hooks, "Hook", None), getattr(server, "TimeoutWatchdog", None)
    ours_args = getattr(getattr(hook, "args", None), "_agentgate", False)
    ours_disarm = getattr(getattr(watchdog, "disarm", None), "_agentgate", False)
    if ours_args and ours_disarm:
        return True
    args_src = _source(getattr(hook, "args", None))
    body = [line.strip() for line in _source(getattr(watchdog, "disarm", None)).splitlines()]
    plain_args = ours_args or ("for field in fields(self)" in args_src
                               and "args.append(getattr(self, field.name))" in args_src)
    plain_disarm = ours_disarm or body == [
        "@contextmanager", "def disarm(self):", "self.can_timeout.clear()", "self.blocker += 1", "try:", "yield",
        "finally:", "self.blocker -= 1", "if self.blocker == 0:", "self.register_activity()", "self.can_timeout.set()"]
    if not (plain_args and plain_disarm):
        log.debug("mitmproxy's %s not what lighter_hooks expects", " and ".join(
            what for what, plain in (("Hook.args is", plain_args), ("TimeoutWatchdog.disarm is", plain_disarm))
            if not plain))
    names: dict[type, tuple[str, ...]] = {}

    def args(self: Any) -> list[Any]:
        cls = type(self)
        fs = names.get(cls)
        if fs is None:
            fs = names[cls] = tuple(f.name for f in dataclasses.fields(self))
        return [getattr(self, n) for n in fs]

    def disarm(self: Any) -> _Disarmed:
        return _Disarmed(self)

    args._agentgate = disarm._agentgate = True
    if plain_args and not ours_args:
        hook.args = args
    if plain_disarm and not ours_disarm:
        watchdog.disarm = disarm
    return plain_args and plain_disarm


def identity_connection_eq() -> bool:
    """``Connection.__eq__`` without the ABC's check for a connection itself or one of mitmproxy's
    own two classes (10. above), where mitmproxy's is as expected."""
    try:
        from mitmproxy import connection
    except ImportError as e:  # pragma: no cover
        log.debug("mitmproxy layout changed (%s)", e)
        return False
    cls = getattr(connection, "Connection", None)
    eq = getattr(cls, "__eq__", None)
    if getattr(eq, "_agentgate", False):
        return True
    body = [line.strip() for line in _source(eq).splitlines()]
    if body != ["def __eq__(self, other):", "if isinstance(other, Connection):", "return self.id == other.id",
                "return False"] or getattr(cls, "__hash__", None) is None:
        log.debug("mitmproxy's Connection.__eq__ is not what identity_connection_eq expects")
        return False

    concrete = tuple(c for c in (getattr(connection, "Client", None), getattr(connection, "Server", None))
                     if isinstance(c, type) and issubclass(c, cls))

    def __eq__(self: Any, other: Any) -> bool:  # noqa: N807 - the dunder it replaces
        if self is other:
            return True
        if other.__class__ in concrete:  # a Connection for certain: what mitmproxy's isinstance finds
            return self.id == other.id
        return eq(self, other)

    __eq__._agentgate = True
    cls.__eq__ = __eq__  # assigned after the class exists: its __hash__ stays as it is
    return True
