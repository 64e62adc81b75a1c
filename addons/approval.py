"""approval: holds a call that needs a human. A call whose decision is ``approve`` asks the store
for its approval (core.approvals): one already approved for exactly this call is taken (single use)
and the call goes on to be signed; otherwise the call is held for up to ``approval_hold`` seconds
without blocking anything else. Approved in that time, it goes on (the signer signs it at
release, so the wait never ages a signature); denied, it gets ``ApprovalDenied`` with the
approver's reason; still undecided, ``ApprovalPending``: a 403 that SDKs do not retry, naming the
approval, the action, the resource and the command that approves it. The same call retried after
approval goes through once; after the approval's expiry it gets ``ApprovalExpired``, as does a call
still held when its approval expires (the approval is then marked expired, so that the retry asks
anew). A try whose
client leaves before its hold ends (a read timeout shorter than the hold) marks its approval in
the store (``client_left``), and a retry joining a marked approval, on any worker or replica, is
answered ``ApprovalPending`` at once rather than held again. An approval whose approver the rule
deciding the call no longer names releases nothing (``AccessDenied``; it is withdrawn, and the
retry asks anew).

Asking for and using an approval run on the store's own threads and wait ``commit_timeout`` at
most; then, or at once while the store is known unable to write, the call gets a 503
``ServiceUnavailable`` to retry.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from mitmproxy import http
from mitmproxy.connection import ConnectionState

from .core.approvals import Approval as ApprovalInfo
from .core.approvals import (ApprovalError, Approvals, TooManyPending, Unvouched, Withdrawn, approvers_spec,
                             describe_approvers, duration_text)
from .core.awserrors import Refusal
from .core.records import new_id
from .core.store import StoreError, Unreadable
from .stage import APPROVAL, CALL, CLIENT_LEFT, DECISION, POLICIES, PRINCIPAL, RECORD_ID, RELEASED, answer, due

log = logging.getLogger("agentgate.approval")

SLICE = 0.5  # seconds between looks at the client and at shutdown while a call is held


def _when(a: ApprovalInfo) -> str:
    return a.expires.strftime("%Y-%m-%d %H:%M:%S UTC") if a.expires else "it expires"


def _what(a: ApprovalInfo) -> str:
    return f"{a.action} on {a.resource}"


def pending_message(a: ApprovalInfo, console_url: str = "", stopping: bool = False) -> str:
    where = f" or in the console at {console_url.rstrip('/')}/#{a.id}" if console_url else ""
    rule = f"rule {a.rule!r}" if a.rule else "a rule"
    why = "The gateway is stopping; the approval is kept in its store. " if stopping else ""
    lasts = f", and an approval lasts {duration_text(a.duration)} from when it is given" if a.duration else ""
    return (f"{_what(a)} needs a human approval ({rule}: {a.request_reason}). {why}Approval {a.id} is pending: "
            f"an approver ({describe_approvers(a.approvers)}) approves it with "
            f"`agentgate approvals approve {a.id} --token-file <their token>`{where}; then retry this same call. It waits for a decision "
            f"until {_when(a)}{lasts}")



def denied_message(a: ApprovalInfo) -> str:
    when = a.decided.strftime("%Y-%m-%d %H:%M:%S UTC") if a.decided else "?"
    return (f"{_what(a)} was denied by {a.approver} ({a.channel}, {when}): {a.reason}. Approval {a.id}; "
            f"this call is not made: ask an approver if it is still needed")


def expired_message(a: ApprovalInfo, used: bool = False) -> str:
    if used:
        return (f"approval {a.id} for {_what(a)} was already used by another request (an approval releases one "
                f"call); retry the call to ask for a new approval")
    how = "approved but not used in time" if a.decided is not None else "before anyone decided it"
    return (f"approval {a.id} for {_what(a)} expired at {_when(a)}, {how}; "
            f"retry the call to ask for a new approval")


def withdrawn_message(a: ApprovalInfo, why: str, decision) -> str:
    now = describe_approvers(approvers_spec(getattr(decision, "approvers", None)))
    return (f"approval {a.id} for {_what(a)} no longer releases it: {why}. The approval is withdrawn and this call is "
            f"not made: retry this same call to ask for a new approval, for an approver ({now}) to approve")


_CAN_READ = ConnectionState.CAN_READ.value  # tested as an int: a Flag's ``&`` builds a member each time


def client_gone(flow: http.HTTPFlow) -> bool:
    """The agent left: its connection is no longer readable, or (HTTP/2) it reset the call's stream."""
    conn = flow.client_conn
    return conn is None or not (conn.state.value & _CAN_READ) or CLIENT_LEFT in flow.metadata


class Approval:
    def __init__(self, approvals: Approvals, hold: float = 20.0, *, notifier=None, console_url: str = "",
                 mask=None, redecide=None) -> None:
        self.approvals = approvals
        # flow -> (decision, policy set) of the version in force, when another decided the call
        # (policy.Policy.redecide): a call held while a policy change is put in force is released
        # only as that change decides it
        self.redecide = redecide
        self.hold = hold
        self.mask = mask  # call -> its parameters as approvers see them (as the record keeps them)
        self.notifier = notifier
        self.console_url = console_url
        self.closing = False
        self.held = 0

    async def _in_store(self, fn, **kwargs):
        """``fn(**kwargs)``, an approval asked for or used, on the store's own threads (a store that
        hangs holds those, not the event loop's default executor, which STS and the issuer's keys
        need), waited for ``commit_timeout`` at most: then TimeoutError, and the call is answered
        503. The thread goes on until the database answers or its connection is found dead (the
        store's keepalives); past that time it uses no approval."""
        store = self.approvals.store
        limit = store.commit_timeout
        kwargs["deadline"] = time.monotonic() + limit
        work = asyncio.get_running_loop().run_in_executor(store.executor, functools.partial(fn, **kwargs))
        return await asyncio.wait_for(work, limit)

    def _unreachable(self, flow: http.HTTPFlow, what: str, why: str, a: ApprovalInfo | None) -> None:
        self._refuse(flow, "ServiceUnavailable", f"{what}, and agentgate {why}; the call is not made: retry this "
                     "same call shortly", a, status=503)

    def _refuse(self, flow: http.HTTPFlow, code: str, message: str, a: ApprovalInfo | None,
                outcome: str = "refused", status: int = 403) -> None:
        answer(flow, Refusal(status, code, message, "approval", outcome))
        if a is not None:
            flow.response.headers["x-agentgate-approval"] = a.id

    async def _run(self, flow: http.HTTPFlow) -> None:
        decision = flow.metadata.get(DECISION)
        if decision is None or decision.decision != "approve":
            return
        call = flow.metadata[CALL]
        principal = flow.metadata[PRINCIPAL]
        shown = None
        if self.mask is not None:
            try:
                shown = self.mask(call)
            except Exception as e:  # noqa: BLE001 - core.approvals masks the model's sensitive members instead
                log.warning("could not mask the parameters of %s for approvers (%s)", call.action, e)
        store = self.approvals.store
        if not store.healthy:  # known: asking would wait on it for nothing
            self._unreachable(flow, f"{call.action} needs a human approval", f"cannot write to its store at "
                              f"{store.where} right now ({store.last_error or 'it is recovering'})", None)
            return
        call_id = flow.metadata.setdefault(RECORD_ID, new_id())
        try:
            asked = await self._in_store(self.approvals.ask, principal=principal, decision=decision, call=call,
                                         shown=shown, call_id=call_id)
        except TimeoutError:
            log.error("cannot hold %s for %s: the store did not answer within %g s", call.action, principal.sub,
                      store.commit_timeout)
            self._unreachable(flow, f"{call.action} needs a human approval", f"found no answer from its approvals "
                              f"in the store at {store.where} within {store.commit_timeout:g} s", None)
            return
        except TooManyPending as e:
            self._refuse(flow, "TooManyPendingApprovals", f"{call.action} needs a human approval, and {e}", None,
                         status=400)
            return
        except Unvouched as e:
            if e.approval is not None:
                flow.metadata[APPROVAL] = e.approval
            self._refuse(flow, "AccessDenied", f"{call.action} needs a human approval, and {e}", e.approval)
            return
        except Unreadable as e:  # the store answered, with a row it cannot read: trying again will not help
            log.error("cannot hold %s for %s: %s", call.action, principal.sub, e)
            self._refuse(flow, "AccessDenied", f"{call.action} needs a human approval, and its approval in the "
                         f"store cannot be read, so nothing releases this call: {e}", None)
            return
        except (StoreError, ApprovalError) as e:
            log.error("cannot hold %s for %s: %s", call.action, principal.sub, e)
            self._unreachable(flow, f"{call.action} needs a human approval", f"cannot reach its approvals right "
                              f"now ({e})", None)
            return
        a = asked.approval
        flow.metadata[APPROVAL] = a
        if asked.state == "withdrawn":
            self._refuse(flow, "AccessDenied", withdrawn_message(a, asked.why or "", decision), a)
            return
        if asked.state == "released":
            flow.metadata[RELEASED] = True
            log.info("released %s for %s: approval %s (approved by %s)", a.action, a.principal, a.id, a.approver)
            return
        if asked.state == "denied":
            self._refuse(flow, "ApprovalDenied", denied_message(a), a)
            return
        if asked.state == "expired":
            self._refuse(flow, "ApprovalExpired", expired_message(a), a)
            return
        if asked.created:
            log.info("holding %s for %s: approval %s asked of %s", a.action, a.principal, a.id,
                     describe_approvers(a.approvers))
            if self.notifier is not None:
                self.notifier.requested(a)
        elif a.client_left is not None:
            # an earlier try left before its hold ended (a read timeout shorter than the hold), on
            # this process or another: held again, a client that always leaves first would never
            # learn the approval's id
            self._refuse(flow, "ApprovalPending", pending_message(a, self.console_url) + " (an earlier try of this "
                         "call left before its hold ended, so this one is answered at once)", a, outcome="held")
            return
        await self._decide(flow, a)

    async def _decide(self, flow: http.HTTPFlow, a: ApprovalInfo) -> None:
        # the hold ends at the approval's expiry when that comes first (a rule's short `expires`, a
        # retry joining an approval near its end): then the call is told it expired, not that it
        # is pending and can be approved (it no longer can)
        at_expiry = a.expires is not None and a.expires.timestamp() - time.time() <= self.hold
        got = await self._hold(flow, a)
        if got == "gone":
            await self._client_left(a)
            self._refuse(flow, "ApprovalPending", pending_message(a, self.console_url), a, outcome="client_gone")
            return
        if got is None and at_expiry and not self.closing:
            got = await self._at_expiry(a)
        if got is None:
            self._refuse(flow, "ApprovalPending", pending_message(a, self.console_url, stopping=self.closing), a,
                         outcome="held")
            return
        state = got.state()
        if state == "denied":
            flow.metadata[APPROVAL] = got
            self._refuse(flow, "ApprovalDenied", denied_message(got), got)
            return
        if state == "revoked":  # its requester withdrew the ask while the call was held
            flow.metadata[APPROVAL] = got
            self._refuse(flow, "AccessDenied", withdrawn_message(got, f"{got.revoked_by} withdrew the ask"
                         + (f" ({got.revoke_reason})" if got.revoke_reason else ""), flow.metadata.get(DECISION)), got)
            return
        if state == "approved":
            store = self.approvals.store
            decision = flow.metadata.get(DECISION)
            if self.redecide is not None and (again := self.redecide(flow)) is not None:
                decision = self._under_new_version(flow, got, decision, *again)
                if decision is None:
                    return
            try:
                taken = await self._in_store(self.approvals.take, approval_id=got.id,
                                             call_id=flow.metadata.get(RECORD_ID),
                                             decision=decision if decision.decision == "approve" else None)
            except Unvouched as e:
                self._refuse(flow, "AccessDenied", f"{a.action} needs a human approval, and {e}", got)
                return
            except Withdrawn as e:
                flow.metadata[APPROVAL] = e.approval or got
                self._refuse(flow, "AccessDenied", withdrawn_message(got, str(e), decision), e.approval or got)
                return
            except TimeoutError:
                log.error("approval %s: the store did not answer within %g s as it was used", got.id,
                          store.commit_timeout)
                self._unreachable(flow, f"approval {got.id} was granted", f"found no answer from its approvals in "
                                  f"the store at {store.where} within {store.commit_timeout:g} s as it used it", got)
                return
            except (StoreError, ApprovalError) as e:
                self._unreachable(flow, f"approval {got.id} was granted", f"cannot reach its approvals to use it "
                                  f"({e})", got)
                return
            if taken is not None:
                flow.metadata[APPROVAL] = taken
                flow.metadata[RELEASED] = True
                log.info("released %s for %s after %s approved it: approval %s", a.action, a.principal,
                         taken.approver, a.id)
                return
            self._refuse(flow, "ApprovalExpired", expired_message(got, used=True), got)
            return
        self._refuse(flow, "ApprovalExpired", expired_message(got, used=state == "used"), got)

    def _under_new_version(self, flow: http.HTTPFlow, got: ApprovalInfo, held, decision, policies):
        """A held call approved after a policy version other than the one that held it was put in
        force is decided by the version in force, as a retry of it would be: the decision it is
        released under (approve: the approval is used only if an approver of the rule now deciding
        gave it; allow: the approval is used up, no longer needed); None once it is refused, because
        that version denies it or runs it as another role than the one approved."""
        call = flow.metadata[CALL]
        flow.metadata[DECISION], flow.metadata[POLICIES], flow.metadata[APPROVAL] = decision, policies, got
        now = f"policy version {policies.version}, put in force while the call was held"
        if decision.decision == "deny":
            rule = f"rule {decision.rule!r}" if decision.rule else "the default rule"
            self._refuse(flow, "AccessDenied", f"agentgate denied {call.action} by {rule}: {decision.reason} "
                         f"({now}; approval {got.id} releases nothing)", got)
            return None
        role = decision.role.role_arn if decision.role is not None else None
        if role != (held.role.role_arn if held is not None and held.role is not None else None):
            why = f"{now}, runs it as {role or 'no role'}, not the role approved ({got.role or 'none'})"
            self._refuse(flow, "AccessDenied", withdrawn_message(got, why, decision), got)
            return None
        log.info("approval %s: %s, decides %s %s (%s)", got.id, now, call.action, decision.decision,
                 decision.rule or "the default")
        return decision

    async def _at_expiry(self, a: ApprovalInfo) -> ApprovalInfo | None:
        """``a`` as it stands once its expiry has passed (marked expired when still pending:
        ``Approvals.expire_due``); None when the store cannot say (the call is then answered
        ApprovalPending, as before)."""
        await asyncio.sleep(max(0.0, a.expires.timestamp() - time.time()) + 0.01)
        try:
            return await self._in_store(self.approvals.expire_due, approval_id=a.id)
        except (TimeoutError, StoreError, ApprovalError) as e:
            log.warning("approval %s: could not read it at its expiry (%s)", a.id, e or type(e).__name__)
            return None

    async def _client_left(self, a: ApprovalInfo) -> None:
        """Mark ``a`` in the store: a try of its call left before its hold ended, so that a retry
        joining it, on any worker or replica, is answered at once. The client is gone whatever
        happens here: a mark that cannot be written is logged, and the next try that leaves tries
        again."""
        store = self.approvals.store
        why = None
        if not store.healthy:
            why = f"the store at {store.where} cannot write right now ({store.last_error or 'it is recovering'})"
        else:
            try:
                await self._in_store(self.approvals.mark_client_left, approval_id=a.id, actor=a.principal)
            except TimeoutError:
                why = f"the store at {store.where} did not answer within {store.commit_timeout:g} s"
            except (StoreError, ApprovalError) as e:
                why = str(e)
        if why is not None:
            log.warning("approval %s: the client holding %s left, and the approval could not say so (%s): a retry "
                        "joining it is held again", a.id, a.action, why)

    async def _hold(self, flow: http.HTTPFlow, a: ApprovalInfo) -> ApprovalInfo | str | None:
        """The approval once decided; None when the hold ends undecided; "gone" when the client left."""
        loop = asyncio.get_running_loop()
        until_expiry = a.expires.timestamp() - time.time() if a.expires is not None else self.hold
        deadline = loop.time() + max(0.0, min(self.hold, until_expiry))
        self.held += 1
        try:
            while not self.closing:
                left = deadline - loop.time()
                if left <= 0:
                    return None
                got = await self.approvals.wait(a.id, min(left, SLICE))
                if got is not None:
                    return got
                if client_gone(flow):
                    log.info("the client holding %s left; approval %s stays pending", a.action, a.id)
                    return "gone"
            return None
        finally:
            self.held -= 1

    async def drain(self, timeout: float = 3.0) -> None:
        """Answer every held call (the gateway is stopping): ApprovalPending, the approval kept."""
        self.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.held and loop.time() < deadline:
            await asyncio.sleep(0.05)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if due(flow, "requestheaders"):
            await self._run(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        if due(flow, "request"):
            await self._run(flow)
