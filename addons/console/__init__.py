"""The approvals console: a small web app (Starlette) that the gateway serves on ``console_listen``
in its own event loop. Approvers sign in with an OIDC token (validated like an agent's) or the
local admin token, see pending approvals with what exactly they ask for, approve or deny them, and
watch recent calls; the page refreshes itself every second.

Who may use it: the local admin, and principals who fit some approve rule's ``approvers`` or
``grant_approvers`` (``may_view``). Deciding checks the approval's own approvers and separation of
duties (core.approvals), the same as the command line.

HTTP API (JSON; every refusal is a 4xx with ``{"error": ...}``):

    POST /api/login {token}             {me, session}: a console session, not the token
    POST /api/logout                    ends the session it is sent with
    GET  /api/state                     {me, pending, decided, calls}
    GET  /api/approvals/{id}            one approval and the calls recorded under it
    POST /api/approvals/{id}/approve    {reason?}
    POST /api/approvals/{id}/deny       {reason}

Requests authenticate with ``Authorization: Bearer <session or token>``: the session ``login``
hands out (the page keeps it in the tab's sessionStorage, which no other origin, another port on
the same host included, can read), or an approver's OIDC token or the admin token themselves (for
scripts). No cookie: a cookie set for 127.0.0.1 goes to every port of the host, so any page an
agent serves on loopback would get it. A session is signed with a key derived from the admin token
(``keys/admin.token``, which every worker reads), names the approver and expires with their token
or after SESSION_LIFETIME; it is good for the console only, never for the proxy. Requests that
change something must send ``Content-Type: application/json`` (a cross-site form cannot), and a
request body over MAX_BODY is refused before it is read.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..core import chain
from ..core.approvals import (ApprovalError, Approvals, NotFound, Refused, admin_principal, admin_token_matches,
                              is_admin, who)
from ..core.store import StoreError

log = logging.getLogger("agentgate.console")

SESSION_PREFIX = "agentgate-console-session."
SESSION_LIFETIME = 8 * 3600  # seconds a console sign-in lasts at most (less when the token expires sooner)
MAX_BODY = 64 * 1024  # bytes of a request body the console reads
PENDING_SHOWN = 200  # the pending approvals the page lists, oldest first; it says how many more there are
PAGE = Path(__file__).with_name("page.html")
# The page writes out what would not show as written (chain.WRITTEN_OUT: control and format
# characters), and the line and paragraph separators, in whatever an agent or a token wrote; in a
# value shown on one line (a resource, a principal, a reason: chain.ONE_LINE), line breaks and
# tabs too, which the page would otherwise show as a space ("a\nb" and "a b" are other keys)
def _character_class(codes: set[int]) -> str:
    runs: list[list[int]] = []
    for c in sorted(codes):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "[" + "".join(f"\\u{{{a:x}}}" + (f"-\\u{{{b:x}}}" if b != a else "") for a, b in runs) + "]"


_HIDDEN_PATTERN = "/" + _character_class({*chain.WRITTEN_OUT, 0x2028, 0x2029}) + "/gu"
_ONE_LINE_PATTERN = "/" + _character_class(set(chain.ONE_LINE)) + "/gu"
CALL_FIELDS = ("id", "time", "principal", "on_behalf_of", "action", "resource", "decision", "rule", "outcome",
               "status", "approval_id", "approver", "latency_ms")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Sessions:
    """Console sessions: signed statements of who signed in, until when; no token inside. Sign-outs
    are kept in ``ended_file`` (beside the keys, where every worker of the gateway reads them, and
    a restart finds them), so that a session signed out is ended everywhere."""

    def __init__(self, admin_token: bytes | None, ended_file: Path | None = None) -> None:
        seed = admin_token.strip() if admin_token else secrets.token_bytes(32)  # without one: this process only
        self.key = hmac.new(seed, b"agentgate console sessions", hashlib.sha256).digest()
        self.ended: dict[str, float] = {}  # nonce -> its session's end, for sessions signed out
        self.ended_file = ended_file
        self._read_at: tuple[int, int] | None = None  # (mtime_ns, size) of ended_file when last read

    def _refresh(self, now: float) -> None:
        """Read the sign-outs other workers wrote, when the file changed since it was last read."""
        if self.ended_file is None:
            return
        try:
            st = self.ended_file.stat()
        except OSError:
            return
        if (st.st_mtime_ns, st.st_size) == self._read_at:
            return
        self._read_at = (st.st_mtime_ns, st.st_size)
        try:
            lines = self.ended_file.read_text(encoding="ascii", errors="replace").splitlines()
        except OSError:
            return
        for line in lines:
            nonce, _, until = line.partition(" ")
            try:
                if float(until) > now:
                    self.ended[nonce] = float(until)
            except ValueError:
                continue

    def issue(self, principal: Any, now: float | None = None) -> str:
        now = time.time() if now is None else now
        statement = {"sub": principal.sub, "iss": principal.iss, "aud": list(principal.aud),
                     "groups": list(principal.groups), "on_behalf_of": principal.on_behalf_of,
                     "claims": dict(principal.claims), "n": secrets.token_hex(8),
                     "exp": min(principal.exp, now + SESSION_LIFETIME)}
        data = _b64(json.dumps(statement, separators=(",", ":"), default=str).encode())
        return SESSION_PREFIX + data + "." + _b64(hmac.new(self.key, data.encode(), hashlib.sha256).digest())

    def _statement(self, session: str) -> dict[str, Any] | None:
        data, _, mac = session[len(SESSION_PREFIX):].partition(".")
        expected = _b64(hmac.new(self.key, data.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            return None
        try:
            statement = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
        except ValueError:
            return None
        return statement if isinstance(statement, dict) else None

    def principal(self, session: str, now: float | None = None) -> tuple[Any, str]:
        """(principal, "") for a session this console signed that has not ended; (None, why)."""
        from ..core.identity import Principal

        now = time.time() if now is None else now
        s = self._statement(session)
        if s is None:
            return None, "the console session is not one this gateway signed: sign in again"
        self._refresh(now)
        if s["exp"] <= now or s["n"] in self.ended:
            return None, "the console session has ended: sign in again"
        return Principal(sub=s["sub"], iss=s["iss"], aud=tuple(s["aud"]), groups=tuple(s["groups"]),
                         on_behalf_of=s["on_behalf_of"], exp=s["exp"], claims=s["claims"]), ""

    def nonce(self, session: str) -> str | None:
        """The nonce of a session this console signed (whether or not it has ended); None otherwise."""
        s = self._statement(session)
        return s["n"] if s is not None and isinstance(s.get("n"), str) else None

    def ended_until(self, session: str) -> tuple[str, float] | None:
        """(nonce, expiry) of a session this console signed, as its sign-out is kept."""
        s = self._statement(session)
        if s is None or not isinstance(s.get("n"), str) or not isinstance(s.get("exp"), (int, float)):
            return None
        return s["n"], float(s["exp"])

    def end(self, session: str, now: float | None = None) -> None:
        s = self._statement(session)
        if s is None:
            return
        now = time.time() if now is None else now
        self._refresh(now)
        self.ended = {n: t for n, t in self.ended.items() if t > now}
        self.ended[s["n"]] = s["exp"]
        if self.ended_file is not None:
            try:  # one line appended (O_APPEND: workers signing out at once do not lose each other's)
                fd = os.open(self.ended_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, f"{s['n']} {s['exp']}\n".encode("ascii"))
                finally:
                    os.close(fd)
            except OSError as e:
                log.warning("could not keep the console's sign-out in %s (%s): it ends the session in this process "
                            "only", self.ended_file, e)


def _call_summary(c: dict[str, Any]) -> dict[str, Any]:
    out = {k: c.get(k) for k in CALL_FIELDS}
    out["resource"] = ", ".join(c.get("resources") or [])
    return out


class Console:
    def __init__(self, approvals: Approvals, store: Any, *, validator: Any = None, admin_token: bytes | None = None,
                 may_view: Callable[[Any], bool] | None = None, notifier: Any = None, calls_shown: int = 30,
                 sessions_ended: Path | None = None) -> None:
        self.approvals = approvals
        self.store = store
        self.validator = validator
        self.admin_token = admin_token
        self.may_view = may_view or (lambda principal: False)
        self.sessions = Sessions(admin_token, sessions_ended)
        self.notifier = notifier
        self.calls_shown = calls_shown
        self.app = Starlette(routes=[
            Route("/", self.page),
            Route("/healthz", self.healthz),
            Route("/api/login", self.login, methods=["POST"]),
            Route("/api/logout", self.logout, methods=["POST"]),
            Route("/api/state", self.state),
            Route("/api/approvals/{id}", self.show),
            Route("/api/approvals/{id}/{verb}", self.decide, methods=["POST"]),
        ])

    # -- who is asking ---------------------------------------------------------------------------

    async def _principal(self, token: str | None) -> tuple[Any, str]:
        """(principal, "") for a token that may use the console, else (None, why not)."""
        if not token:
            return None, "sign in with an approver's OIDC token or the local admin token (keys/admin.token)"
        if not token.isascii():  # every token is ASCII (base64url, hex): not one, whatever it holds
            return None, "the token is neither the local admin token nor an OIDC token this gateway accepts"
        if token.startswith(SESSION_PREFIX):
            principal, why = self.sessions.principal(token)
            if principal is not None and await self._signed_out_elsewhere(token):
                return None, "the console session has ended: sign in again"
            if principal is not None and not is_admin(principal) and not self.may_view(principal):
                return None, f"{principal.sub} is no longer an approver"
            return principal, why
        if admin_token_matches(token, self.admin_token):
            return admin_principal(), ""
        if self.validator is None or token.count(".") != 2:
            return None, "the token is neither the local admin token nor an OIDC token this gateway accepts"
        from ..core.identity import TokenError

        try:
            principal = await self.validator.validate(token)
        except TokenError as e:
            return None, f"the token was refused: {e.reason}"
        if not self.may_view(principal):
            return None, (f"{principal.sub} is not an approver: the console is for the approvers that the "
                          "policies' approve rules and grant_approvers name")
        return principal, ""

    async def _signed_out_elsewhere(self, session: str) -> bool:
        """Whether the session was signed out through another console sharing the store (another
        replica's). A store that cannot be read leaves the sign-outs this process knows."""
        nonce = self.sessions.nonce(session)
        if nonce is None or self.store is None:
            return False
        try:
            return await asyncio.to_thread(self.store.console_session_ended, nonce)
        except StoreError as e:
            log.warning("cannot read the console's sign-outs from the store (%s): a session signed out through "
                        "another replica's console is not known here", e)
            return False

    async def _who(self, request: Request) -> tuple[Any, JSONResponse | None]:
        principal, why = await self._principal(_bearer(request))
        return principal, (None if principal is not None else _error(401, why))

    # -- pages -----------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return HTMLResponse(PAGE.read_text(encoding="utf-8").replace("/__HIDDEN__/", _HIDDEN_PATTERN)
                            .replace("/__ONE_LINE__/", _ONE_LINE_PATTERN), headers={
            "cache-control": "no-store",
            "content-security-policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                       "connect-src 'self'; frame-ancestors 'none'",
            "x-content-type-options": "nosniff",
        })

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    @staticmethod
    def _json_body_required(request: Request) -> JSONResponse | None:
        if not request.headers.get("content-type", "").startswith("application/json"):
            return _error(415, "send a JSON body (Content-Type: application/json)")
        return None

    async def _body(self, request: Request) -> tuple[dict[str, Any], JSONResponse | None]:
        if (refused := self._json_body_required(request)) is not None:
            return {}, refused
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return {}, _error(413, f"the body is over {MAX_BODY} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                return {}, _error(413, f"the body is over {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return {}, _error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return {}, _error(400, "the body must be a JSON object")
        return body, None

    async def login(self, request: Request) -> Response:
        body, refused = await self._body(request)
        if refused is not None:
            return refused
        token = str(body.get("token") or "").strip()
        principal, why = await self._principal(token)
        if principal is None:
            return _error(401, why)
        if not is_admin(principal):
            principal = dataclasses.replace(principal, exp=min(principal.exp, time.time() + SESSION_LIFETIME))
        return JSONResponse({"me": self._me(principal), "session": self.sessions.issue(principal)},
                            headers={"cache-control": "no-store"})

    async def logout(self, request: Request) -> Response:
        token = _bearer(request)
        if token and token.startswith(SESSION_PREFIX):
            self.sessions.end(token)
            ended = self.sessions.ended_until(token)
            if ended is not None and self.store is not None:
                try:  # for every replica sharing the store
                    await asyncio.to_thread(self.store.end_console_session, *ended)
                except StoreError as e:
                    log.warning("could not keep the console's sign-out in the store (%s): other replicas still "
                                "honour the session until it expires", e)
        return JSONResponse({"ok": True})

    @staticmethod
    def _me(principal: Any) -> dict[str, Any]:
        return {"sub": who(principal), "admin": is_admin(principal), "groups": list(getattr(principal, "groups", ()))}

    async def state(self, request: Request) -> Response:
        principal, refused = await self._who(request)
        if refused is not None:
            return refused
        try:
            pending, total, recent, calls, unreadable = await asyncio.to_thread(self._state)
        except StoreError as e:
            return _error(503, str(e))
        return JSONResponse({"me": self._me(principal), "pending": pending, "pending_total": total, "decided": recent,
                             "calls": calls, "unreadable": unreadable}, headers={"cache-control": "no-store"})

    def _state(self) -> tuple[list, int, list, list, list[str]]:
        # a row holding a value that cannot be read is named (as ``agentgate verify`` names it) and
        # left out, rather than keeping every other approval from its approvers
        unreadable: list[str] = []
        # the oldest first: a flood of new asks cannot push an earlier one off the page
        pending = [a.as_dict() for a in self.approvals.list(pending=True, limit=PENDING_SHOWN, oldest_first=True,
                                                            unreadable=unreadable)]
        total = self.approvals.pending_count() if len(pending) >= PENDING_SHOWN else len(pending)
        recent = [a.as_dict() for a in self.approvals.list(settled=True, limit=20, unreadable=unreadable)]
        calls = [_call_summary(c) for c in self.store.calls(limit=self.calls_shown, unreadable=unreadable)]
        return pending, total, recent, calls, list(dict.fromkeys(unreadable))

    async def show(self, request: Request) -> Response:
        principal, refused = await self._who(request)
        if refused is not None:
            return refused
        approval_id = request.path_params["id"]
        unreadable: list[str] = []  # what cannot be read is named and left out, as in the state
        try:
            a = await asyncio.to_thread(self.approvals.get, approval_id, unreadable)
            if a is None:
                return _error(404, f"there is no approval {approval_id!r}")
            calls = await asyncio.to_thread(self.approvals.calls_for, approval_id, unreadable=unreadable)
            history = await asyncio.to_thread(self.approvals.history, approval_id, unreadable)
        except StoreError as e:
            return _error(503, str(e))
        return JSONResponse({"approval": a.as_dict(), "history": history, "calls": calls,
                             "unreadable": list(dict.fromkeys(unreadable))})

    async def decide(self, request: Request) -> Response:
        verb = request.path_params["verb"]
        if verb not in ("approve", "deny"):
            return _error(404, f"unknown action {verb!r}: approve or deny")
        principal, refused = await self._who(request)
        if refused is not None:
            return refused
        body, refused = await self._body(request)
        if refused is not None:
            return refused
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            return _error(400, "reason must be a string")
        try:
            a = await asyncio.to_thread(self.approvals.decide, request.path_params["id"], principal,
                                        approve=verb == "approve", reason=reason, channel="console")
        except NotFound as e:
            return _error(404, str(e))
        except Refused as e:
            return _error(403, str(e))
        except ApprovalError as e:
            return _error(400, str(e))
        except StoreError as e:
            return _error(503, str(e))
        if self.notifier is not None:
            self.notifier.decided(a)
        return JSONResponse({"approval": a.as_dict()})


def approvers_of(policies: Any, grant_approvers: list[str]) -> Callable[[Any], bool]:
    """``may_view`` for a gateway: fits some approve rule's approvers (in the policies in force),
    or is in one of ``grant_approvers``' groups."""
    from ..core.policy import principal_matches

    def may_view(principal: Any) -> bool:
        specs = [r.approvers for r in policies.current.rules if r.decision == "approve" and r.approvers]
        if grant_approvers:
            specs.append({"groups": list(grant_approvers)})
        return any(principal_matches(spec, principal) for spec in specs)

    return may_view


# ---------------------------------------------------------------------------------------------
# Serving it in the gateway's event loop


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening socket for the console; OSError when the address is taken. ``reuse_port``:
    gateway workers share the port (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Server:
    """uvicorn, run as a task of the caller's loop, leaving the process's signals to the gateway."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            stopping: asyncio.Event | None = None

            @contextlib.contextmanager
            def capture_signals(self):  # the gateway owns SIGTERM and SIGINT
                yield

            async def main_loop(self) -> None:
                """uvicorn's loop wakes ten times a second to look at should_exit and refreshes its
                Date header every tenth time; this one wakes once a second (the header refreshed
                each time) or at once when ``Server.stop`` asks."""
                self.stopping = asyncio.Event()
                while not await self.on_tick(0):  # tick 0: uvicorn's once-a-second work
                    try:
                        await asyncio.wait_for(self.stopping.wait(), 1.0)
                    except TimeoutError:
                        pass

        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1)
        self.sock = sock
        self.server = _Server(config)
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        serving = self.server.serve(sockets=[self.sock])
        self.task = asyncio.get_running_loop().create_task(serving, name="agentgate-console")

    async def stop(self) -> None:
        if self.task is None:
            return
        self.server.should_exit = True
        if self.server.stopping is not None:
            self.server.stopping.set()
        try:
            await asyncio.wait_for(self.task, 5)
        except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
            self.task.cancel()
        self.sock.close()
        self.task = None
