"""Approvals in the store, without a proxy: the binding hash, asking, deciding (who may), single
use, expiry, denial, access grants, and waiting for a decision made elsewhere, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
import time

import pytest

from addons.core import approvals as core
from addons.core.approvals import Approvals, Refused, admin_principal, binding_hash, may_decide
from addons.core.classifier import Classification
from addons.core.identity import Principal
from addons.core.policy import Decision, RoleBinding
from addons.core.store import Store, Unreadable
from tests.support.postgres import shared_server

UTC = dt.timezone.utc
ROLE = RoleBinding("arn:aws:iam::123456789012:role/agent-role", None, 3600, False, "agents")


def principal(sub: str, groups=("data-agents",), obo: str | None = None, iss: str = "https://issuer") -> Principal:
    return Principal(sub=sub, iss=iss, aud=("agentgate",), groups=tuple(groups), on_behalf_of=obo,
                     exp=time.time() + 300, claims={"sub": sub})


def decision(expires: int = 900, approvers=None) -> Decision:
    return Decision("approve", "deleting-needs-sre", "deleting cannot be undone", "v1", ROLE, (),
                    approvers if approvers is not None else {"groups": ("sre",)}, expires, ())


def terminate(*ids: str, token: str | None = None) -> Classification:
    params = {"InstanceIds": list(ids)}
    return Classification(service="ec2", operation="TerminateInstances", protocol="ec2", region="us-east-1",
                          params=params, resources=list(ids), action="ec2:TerminateInstances", access_level="Write")


AGENT = principal("agent-1", obo="bob")
SRE = principal("alice", groups=("sre",))


@pytest.fixture(params=["sqlite", "postgresql"])
def approvals(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}" if request.param == "sqlite" else shared_server().fresh_database()
    store = Store(url)
    store.migrate()
    yield Approvals(store)
    store.engine.dispose()


# -- the binding ----------------------------------------------------------------------------------


def test_the_binding_covers_who_what_where_and_the_parameters():
    def h(who=AGENT, role=ROLE.role_arn, operation="TerminateInstances", region="us-east-1", ids=("i-1",)):
        return binding_hash(who, role, "ec2", operation, region, {"InstanceIds": list(ids)})

    base = h()
    assert base == h()
    for other in (h(who=principal("agent-2", obo="bob")), h(who=principal("agent-1", obo="carol")),
                  h(who=principal("agent-1", obo="bob", iss="https://other")),
                  h(role="arn:aws:iam::123456789012:role/other"), h(operation="StopInstances"),
                  h(region="eu-west-1"), h(ids=("i-2",)), h(ids=("i-1", "i-2"))):
        assert other != base


def test_idempotency_tokens_do_not_bind_and_key_order_does_not_matter():
    a = {"FunctionName": "f", "Qualifier": "1"}
    b = {"Qualifier": "1", "FunctionName": "f"}
    assert binding_hash(AGENT, None, "lambda", "DeleteFunction", "us-east-1", a) == \
        binding_hash(AGENT, None, "lambda", "DeleteFunction", "us-east-1", b)
    # ec2:RunInstances' ClientToken is an idempotency token: the SDK makes a new one per call
    first = {"ImageId": "ami-1", "MinCount": 1, "MaxCount": 1, "ClientToken": "token-1"}
    again = {**first, "ClientToken": "token-2"}
    assert binding_hash(AGENT, None, "ec2", "RunInstances", "us-east-1", first) == \
        binding_hash(AGENT, None, "ec2", "RunInstances", "us-east-1", again)
    assert binding_hash(AGENT, None, "ec2", "RunInstances", "us-east-1", first) != \
        binding_hash(AGENT, None, "ec2", "RunInstances", "us-east-1", {**first, "ImageId": "ami-2"})


def test_approvers_see_parameters_with_sensitive_members_masked():
    shown = core.shown_params("secretsmanager", "PutSecretValue", {"SecretId": "db", "SecretString": "hunter2"})
    assert shown == {"SecretId": "db", "SecretString": core.MASK}
    assert core.shown_params("no-such-service", "X", {"a": 1}) == {"a": 1}


# -- who may decide ----------------------------------------------------------------------------------


def test_separation_of_duties_and_the_rules_approvers(approvals):
    a = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-1")).approval
    assert "separation of duties" in may_decide(a, principal("agent-1", groups=("sre",)))
    assert "separation of duties" in may_decide(a, principal("bob", groups=("sre",)))  # the agent acts for bob
    assert "separation of duties" in may_decide(a, principal("ops-bot", groups=("sre",), obo="agent-1"))
    assert "not among the approvers" in may_decide(a, principal("mallory", groups=("dev",)))
    assert may_decide(a, SRE) is None
    assert may_decide(a, admin_principal()) is None
    with pytest.raises(Refused, match="separation of duties"):
        approvals.decide(a.id, principal("bob", groups=("sre",)), approve=True)
    with pytest.raises(Refused, match=r"mallory \(groups \['dev'\]\) is not among the approvers"):
        approvals.decide(a.id, principal("mallory", groups=("dev",)), approve=True)
    with pytest.raises(core.ApprovalError, match="a denial needs a reason"):
        approvals.decide(a.id, SRE, approve=False, reason="  ")
    with pytest.raises(core.NotFound):
        approvals.decide("ap-nope", SRE, approve=True)
    assert approvals.get(a.id).status == "pending"


def test_no_party_of_a_nested_act_chain_approves(approvals):
    """agent-1 acts for an orchestrator that acts for alice (act nested in act): alice, at the end
    of the chain, may not approve the call she set going, nor the orchestrator; a chain binds its
    approval, so the same call with another chain asks anew."""
    from addons.core.identity import principal_from_claims

    claims = {"sub": "agent-1", "iss": "https://issuer", "aud": "agentgate", "exp": time.time() + 300,
              "groups": ["data-agents"], "act": {"sub": "orchestrator", "act": {"sub": "alice"}}}
    chained = principal_from_claims(claims, audiences=("agentgate",))
    assert (chained.on_behalf_of, chained.actors) == ("orchestrator", ("orchestrator", "alice"))
    a = approvals.ask(principal=chained, decision=decision(), call=terminate("i-chain")).approval
    assert approvals.get(a.id).actors == ("orchestrator", "alice")
    for who in ("alice", "orchestrator"):
        with pytest.raises(Refused, match="separation of duties"):
            approvals.decide(a.id, principal(who, groups=("sre",)), approve=True)
    other = principal_from_claims({**claims, "act": {"sub": "orchestrator", "act": {"sub": "carol"}}},
                                  audiences=("agentgate",))
    assert approvals.ask(principal=other, decision=decision(), call=terminate("i-chain")).approval.id != a.id
    approvals.decide(a.id, principal("dave", groups=("sre",)), approve=True)
    deep: dict = {"sub": "a0"}
    for n in range(1, 10):
        deep = {"sub": f"a{n}", "act": deep}
    with pytest.raises(Exception, match="nests more than 8 actors"):
        principal_from_claims({**claims, "act": deep}, audiences=("agentgate",))


# -- asking, deciding, taking --------------------------------------------------------------------------


def test_retries_while_pending_find_the_same_approval_and_an_approval_releases_one_call(approvals):
    first = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-1"))
    assert first.state == "pending" and first.created
    again = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-1"))
    assert again.state == "pending" and not again.created and again.approval.id == first.approval.id
    other = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-2"))
    assert other.approval.id != first.approval.id

    decided = approvals.decide(first.approval.id, SRE, approve=True, reason="ok", channel="cli")
    assert (decided.status, decided.approver, decided.reason, decided.channel) == ("approved", "alice", "ok", "cli")
    assert decided.decided is not None and decided.expires > decided.decided
    with pytest.raises(Refused, match="already approved by alice"):
        approvals.decide(first.approval.id, principal("carol", groups=("sre",)), approve=False, reason="no")

    # someone else's identical call is not released by it
    assert approvals.ask(principal=principal("agent-2"), decision=decision(), call=terminate("i-1")).state == "pending"
    released = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-1"))
    assert released.state == "released" and released.approval.id == first.approval.id
    assert approvals.get(first.approval.id).status == "used"
    after = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-1"))
    assert after.state == "pending" and after.created and after.approval.id != first.approval.id


def test_an_approval_not_yet_used_can_be_withdrawn_and_its_call_then_asks_anew(approvals):
    asked = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-7"))
    approvals.decide(asked.approval.id, SRE, approve=True)
    with pytest.raises(Refused, match="only its requester, the local admin or its approvers"):
        approvals.revoke(asked.approval.id, principal("mallory", groups=("dev",)))
    r = approvals.revoke(asked.approval.id, principal("carol", groups=("sre",)), reason="wrong instance")
    assert (r.status, r.revoked_by, r.revoke_reason) == ("revoked", "carol", "wrong instance")
    retry = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-7"))
    assert retry.state == "pending" and retry.created and retry.approval.id != asked.approval.id
    assert [e["event"] for e in approvals.history(asked.approval.id)] == ["requested", "approved", "revoked"]
    # one already used cannot be withdrawn: its call ran
    approvals.decide(retry.approval.id, SRE, approve=True)
    assert approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-7")).state == "released"
    with pytest.raises(Refused, match="only an approval not yet used is revoked"):
        approvals.revoke(retry.approval.id, SRE)


def test_an_approval_releases_its_call_only_while_its_approver_is_among_the_rules_approvers(approvals):
    """The approvers of the rule deciding the call when it uses the approval hold: the same (in any
    order), or naming the approver by sub, release it; others withdraw it (the approval keeps the
    approver's name, not their groups), and the call asks anew under them."""
    def approved(n: int, approvers=None):
        asked = approvals.ask(principal=AGENT, decision=decision(approvers=approvers), call=terminate(f"i-ch-{n}"))
        approvals.decide(asked.approval.id, SRE, approve=True)
        return asked.approval.id

    same = approved(1, {"groups": ("sre", "ops")})
    assert approvals.ask(principal=AGENT, decision=decision(approvers={"groups": ("ops", "sre")}),
                         call=terminate("i-ch-1"), call_id="c-1").state == "released"
    assert approvals.get(same).call_id == "c-1"
    by_name = approved(2)
    assert approvals.take(by_name, call_id="c-2", decision=decision(approvers={"sub": ("carol", "alice")})).status == "used"
    approved(3)
    assert approvals.ask(principal=AGENT, decision=decision(approvers={}), call=terminate("i-ch-3")).state == "released"

    tightened = approved(4)
    withdrawn = approvals.ask(principal=AGENT, decision=decision(approvers={"sub": ("carol",)}), call=terminate("i-ch-4"))
    assert (withdrawn.state, withdrawn.approval.id, withdrawn.approval.status) == ("withdrawn", tightened, "revoked")
    assert "group sre" in withdrawn.why and "sub carol" in withdrawn.why and "alice is not among them" in withdrawn.why
    a = approvals.get(tightened)
    assert (a.status, a.revoked_by, a.call_id) == ("revoked", "agentgate:policy", None)
    assert [e["event"] for e in approvals.history(tightened)] == ["requested", "approved", "revoked"]
    anew = approvals.ask(principal=AGENT, decision=decision(approvers={"sub": ("carol",)}), call=terminate("i-ch-4"))
    assert anew.state == "pending" and anew.created and anew.approval.approvers == {"sub": ["carol"]}
    loosened = approved(5)  # groups the approval cannot show alice in: asked again (fail closed)
    with pytest.raises(core.Withdrawn, match="group sre or ops"):
        approvals.take(loosened, decision=decision(approvers={"groups": ("sre", "ops")}))


def test_one_principal_has_at_most_max_pending_approvals_pending(approvals):
    """A flood of distinct asks from one agent stops at max_pending: the next one is refused (not
    held), while a retry of a pending call still joins its approval, another principal still asks,
    and a decision makes room again."""
    from addons.core.approvals import TooManyPending

    approvals.max_pending = 3
    asked = [approvals.ask(principal=AGENT, decision=decision(), call=terminate(f"i-flood-{n}")).approval
             for n in range(3)]
    with pytest.raises(TooManyPending, match="agent-1 has 3 approvals pending, as many as one principal may"):
        approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-flood-3"))
    assert approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-flood-0")).approval.id == asked[0].id
    other = principal("agent-2")
    assert approvals.ask(principal=other, decision=decision(), call=terminate("i-flood-3")).state == "pending"
    approvals.decide(asked[0].id, SRE, approve=False, reason="no")
    assert approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-flood-3")).state == "pending"


def test_settled_approvals_come_latest_decision_first(approvals):
    t0 = dt.datetime.now(UTC)
    first = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-a"), now=t0)
    second = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-b"), now=t0 + dt.timedelta(seconds=1))
    waiting = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-c"), now=t0 + dt.timedelta(seconds=2))
    approvals.decide(second.approval.id, SRE, approve=False, reason="no", now=t0 + dt.timedelta(seconds=3))
    approvals.decide(first.approval.id, SRE, approve=True, now=t0 + dt.timedelta(seconds=4))  # asked first, decided last
    settled = [a.id for a in approvals.list(settled=True, now=t0 + dt.timedelta(seconds=5))]
    assert settled == [first.approval.id, second.approval.id] and waiting.approval.id not in settled


def test_denial_answers_until_the_request_would_have_expired(approvals):
    a = approvals.ask(principal=AGENT, decision=decision(expires=60), call=terminate("i-3")).approval
    approvals.decide(a.id, SRE, approve=False, reason="not during the freeze")
    asked = approvals.ask(principal=AGENT, decision=decision(expires=60), call=terminate("i-3"))
    assert asked.state == "denied" and asked.approval.reason == "not during the freeze"
    later = dt.datetime.now(UTC) + dt.timedelta(seconds=61)
    assert approvals.ask(principal=AGENT, decision=decision(expires=60), call=terminate("i-3"), now=later).created


def test_expiry_pending_and_approved(approvals):
    now = dt.datetime.now(UTC)
    a = approvals.ask(principal=AGENT, decision=decision(expires=30), call=terminate("i-4"), now=now).approval
    later = now + dt.timedelta(seconds=31)
    with pytest.raises(Refused, match="expired"):
        approvals.decide(a.id, SRE, approve=True, now=later)
    assert [x.id for x in approvals.list(pending=True)] == [a.id]
    assert approvals.list(pending=True, now=later) == []
    asked = approvals.ask(principal=AGENT, decision=decision(expires=30), call=terminate("i-4"), now=later)
    assert asked.state == "expired" and asked.approval.id == a.id
    fresh = approvals.ask(principal=AGENT, decision=decision(expires=30), call=terminate("i-4"), now=later)
    assert fresh.created
    # approved but not used in time
    approvals.decide(fresh.approval.id, SRE, approve=True, now=later)
    much_later = later + dt.timedelta(seconds=31)
    assert approvals.take(fresh.approval.id, now=much_later) is None
    assert approvals.ask(principal=AGENT, decision=decision(expires=30), call=terminate("i-4"), now=much_later).state == "expired"


def test_two_askers_at_once_share_one_pending_approval(approvals):
    results = []
    barrier = threading.Barrier(8)

    def ask():
        barrier.wait()
        results.append(approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-race")))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.approval.id for r in results}) == 1
    assert sum(r.created for r in results) == 1


# -- waiting ---------------------------------------------------------------------------------------------


def test_wait_wakes_on_a_decision_made_by_another_process(approvals):
    """A decision committed by another process (the CLI, another replica) wakes the call waiting
    for it within a second (PostgreSQL's notification, or either store's poll), however long that
    process took to commit it (on a loaded machine, seconds)."""
    other = Approvals(Store(approvals.store.url))  # the CLI or another replica: its own engine
    decided: list[float] = []
    approval_id: list[str] = []

    def decide() -> None:
        other.decide(approval_id[0], SRE, approve=True)
        decided.append(time.monotonic())

    deciding = threading.Thread(target=decide)

    async def main():
        await approvals.start()
        try:
            a = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-5")).approval
            approval_id.append(a.id)
            assert await approvals.wait(a.id, 0.3) is None
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, deciding.start)
            got = await approvals.wait(a.id, 10)
            return got, time.monotonic()
        finally:
            await approvals.aclose()

    got, woke = asyncio.run(main())
    deciding.join(10)
    other.engine.dispose()
    assert got is not None and got.status == "approved" and got.approver == "alice"
    assert decided and woke - decided[0] < 1.2, woke - decided[0]


def test_an_approval_that_cannot_be_read_keeps_no_other_held_call_waiting(approvals):
    """The gateway's poll reads the approvals its held calls wait for once they are decided; one of
    them holding a value that cannot be read (edited behind its back) made every poll fail, so no
    held call was released, whoever decided it. That one is now left out (its call is answered
    ApprovalPending when its hold ends, and a retry is refused on reading it), and the others wake."""
    from tests.test_verify_stored import edit

    other = Approvals(Store(approvals.store.url))
    bad = "'infinity'" if approvals.store.postgres else "'yesterday'"

    async def main():
        await approvals.start()
        try:
            a = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-1")).approval
            b = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-2")).approval
            waits = [asyncio.ensure_future(approvals.wait(x.id, t)) for x, t in ((a, 3), (b, 10))]
            await asyncio.sleep(0.3)
            edit(approvals.store.url, f"update approvals set status = 'approved', requested = {bad} where id = '{a.id}'")
            await asyncio.sleep(0.3)
            await asyncio.to_thread(other.decide, b.id, SRE, approve=True)
            started = time.monotonic()
            got_b = await waits[1]
            took = time.monotonic() - started
            return await waits[0], got_b, took
        finally:
            await approvals.aclose()

    got_a, got_b, took = asyncio.run(main())
    other.store.engine.dispose()
    assert got_a is None
    assert got_b is not None and got_b.status == "approved" and took < 2, (got_b, took)
    with pytest.raises(Unreadable, match="cannot be read"):  # the same call again: refused, not released
        approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-1"))


# -- access grants ------------------------------------------------------------------------------------------


def test_access_grants_request_approve_use_and_revoke(approvals):
    contractor = principal("contractor-7", groups=("contractors",))
    asked = approvals.request_grant(contractor, role_arn=ROLE.role_arn, role_id="agents", duration=1800,
                                    reason="incident 42", approvers={"groups": ["sre"]})
    assert asked.created and asked.approval.kind == "grant" and asked.approval.id.startswith("gr-")
    again = approvals.request_grant(contractor, role_arn=ROLE.role_arn, role_id="agents", duration=1800,
                                    reason="incident 42", approvers={"groups": ["sre"]})
    assert not again.created and again.approval.id == asked.approval.id
    with pytest.raises(Refused, match="separation of duties"):
        approvals.decide(asked.approval.id, principal("contractor-7", groups=("sre",)), approve=True)
    g = approvals.decide(asked.approval.id, SRE, approve=True)
    assert 1795 < (g.expires - g.decided).total_seconds() <= 1800
    assert [x.id for x in approvals.active_grants()] == [g.id]

    approvals._grants = approvals.active_grants()
    assert approvals.grant_for(contractor).id == g.id
    assert approvals.grant_for(principal("someone-else")) is None
    assert approvals.grant_for(contractor, now=g.expires + dt.timedelta(seconds=1)) is None

    with pytest.raises(Refused, match="only its grantee"):
        approvals.revoke(g.id, principal("mallory", groups=("dev",)))
    r = approvals.revoke(g.id, contractor, reason="done")
    assert (r.status, r.revoked_by, r.revoke_reason) == ("revoked", "contractor-7", "done")
    assert approvals.active_grants() == []
    with pytest.raises(Refused, match="revoked by contractor-7"):
        approvals.revoke(g.id, SRE)


def test_a_grant_that_cannot_be_read_is_not_in_force_and_keeps_no_other_revocation_from_taking_effect(approvals, caplog):
    """The gateway reloads the grants in force every second; one grant holding a value that cannot be
    read (edited behind its back) made every reload fail, so the grants it had in memory stayed in
    force, a grant revoked since among them. Such a grant is now left out, as one not vouched for is:
    it lets no principal run as its role, and the others' revocations take effect."""
    from tests.test_verify_stored import edit

    granted = []
    for who in ("contractor-7", "contractor-8"):
        asked = approvals.request_grant(principal(who, groups=("contractors",)), role_arn=ROLE.role_arn,
                                        role_id="agents", duration=1800, reason="incident 42",
                                        approvers={"groups": ["sre"]})
        granted.append(approvals.decide(asked.approval.id, SRE, approve=True))
    assert sorted(g.id for g in approvals.active_grants()) == sorted(g.id for g in granted)
    broken, kept = granted
    bad = "'infinity'" if approvals.store.postgres else "'yesterday'"
    edit(approvals.store.url, f"update approvals set requested = {bad} where id = '{broken.id}'")
    with caplog.at_level("WARNING", logger="agentgate.approvals"):
        assert [g.id for g in approvals.active_grants()] == [kept.id]
        assert [g.id for g in approvals.active_grants()] == [kept.id]
    [warned] = [r.getMessage() for r in caplog.records if broken.id in r.getMessage()]  # once, not every reload
    assert warned.startswith(f"approval {broken.id} ") and "requested cannot be read" in warned
    assert warned.endswith("that grant is not in force")
    approvals.revoke(kept.id, principal("contractor-8"), reason="done")
    assert approvals.active_grants() == []


def test_a_grant_gives_the_role_the_policies_describe(tmp_path):
    from addons.core.policy import PolicySet

    (tmp_path / "p.yaml").write_text(
        "version: 1\nroles:\n"
        "  - id: elevated\n    principal: {groups: [nobody]}\n"
        "    role_arn: arn:aws:iam::123456789012:role/admin\n    duration: 15m\n")
    policy_set = PolicySet.load(tmp_path)
    grant = dataclasses.replace(_grant_stub(), rule="elevated", role="arn:aws:iam::123456789012:role/admin")
    assert core.granted_role(policy_set, grant).duration == 900
    assert core.granted_role(policy_set, dataclasses.replace(grant, rule=None)).rule_id == "elevated"
    assert core.granted_role(policy_set, dataclasses.replace(grant, rule=None, role="arn:aws:iam::1:role/gone")) is None


def _grant_stub() -> core.Approval:
    now = dt.datetime.now(UTC)
    return core.Approval(
        id="gr-1", kind="grant", status="approved", binding_hash="h", principal="p", issuer="i", on_behalf_of=None,
        action=core.GRANT_ACTION, service=None, operation=None, region=None, resources=(), params=None, role=None,
        rule=None, policy_version=None, approvers=None, request_reason=None, duration=60, requested=now,
        expires=now, decided=now, approver="a", reason=None, channel="cli", used=None, revoked=None,
        revoked_by=None, revoke_reason=None)


# -- the addon, without sockets ---------------------------------------------------------------------------


def _flow(call: Classification, who: Principal = AGENT):
    from mitmproxy.test import tflow

    from addons.stage import CALL, DECISION, PRINCIPAL

    flow = tflow.tflow()
    flow.metadata.update({PRINCIPAL: who, CALL: call, DECISION: decision()})
    return flow


def test_the_addon_holds_releases_and_answers_in_the_calls_protocol(tmp_path):
    from addons.approval import Approval
    from addons.stage import APPROVAL, REFUSAL

    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.migrate()
    approvals = Approvals(store)
    addon = Approval(approvals, hold=0.4, console_url="http://127.0.0.1:8081")

    async def main():
        await approvals.start()
        try:
            # undecided: ApprovalPending, shaped for EC2, naming the approval and the command
            flow = _flow(terminate("i-9"))
            await addon.request(flow)
            assert flow.response.status_code == 403 and flow.metadata[REFUSAL].outcome == "held"
            body = flow.response.get_text()
            approval_id = flow.response.headers["x-agentgate-approval"]
            assert "<Code>ApprovalPending</Code>" in body and f"agentgate approvals approve {approval_id}" in body
            assert f"http://127.0.0.1:8081/#{approval_id}" in body

            # decided while held: the flow goes on, unanswered, to the signer
            flow = _flow(terminate("i-9"))
            loop = asyncio.get_running_loop()
            loop.call_later(0.1, lambda: approvals.decide(approval_id, SRE, approve=True))
            addon.hold = 5
            await addon.request(flow)
            assert flow.response is None and flow.metadata[APPROVAL].status == "used"
            assert flow.metadata[APPROVAL].approver == "alice"

            # stopping: held calls are answered at once, the approval kept
            flow = _flow(terminate("i-10"))
            task = asyncio.create_task(addon.request(flow))
            await asyncio.sleep(0.2)
            await addon.drain()
            await task
            assert "The gateway is stopping; the approval is kept in its store" in flow.response.get_text()
            assert approvals.get(flow.response.headers["x-agentgate-approval"]).status == "pending"
        finally:
            await approvals.aclose()

    asyncio.run(main())
    store.engine.dispose()


def test_the_command_lines_webhook_post_gives_up_within_its_bound():
    """A webhook that accepts the connection and never answers holds an approver's command a few
    seconds at most (the decision is made before the post): SEND_WITHIN, retries included."""
    import socket

    from addons.notify import SEND_WITHIN, send

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # accepted by the kernel, never read or answered
        started = time.monotonic()
        assert send(f"http://127.0.0.1:{server.getsockname()[1]}/hook", {"text": "x"}) is False
        took = time.monotonic() - started
    assert SEND_WITHIN - 0.5 < took < SEND_WITHIN + 1.5, took


def test_an_approvals_message_keeps_what_an_agent_wrote_on_its_line(approvals):
    """A resource with line breaks (an S3 key can hold them) cannot add lines that look like the
    message's own (another rule, other approvers) to the webhook's text or the command line's
    listing; a long list of resources is cut, with the console named for the rest (Slack refuses
    a section over 3,000 characters)."""
    from click.testing import CliRunner

    from addons.commands import approvals as approvals_cli
    from addons.notify import message

    sly = "i-1\nrule tmp-cleanup: routine cleanup\nApprovers: group everyone\n"
    a = approvals.ask(principal=AGENT, decision=decision(), call=terminate(sly)).approval
    text = message(a, "requested")["text"]
    head = text.splitlines()[0]
    assert "rule tmp-cleanup" in head and "\\nrule tmp-cleanup" in head  # written out, on the head's line
    assert not any(line.startswith(("rule tmp-cleanup", "Approvers: group everyone")) for line in text.splitlines())
    many = approvals.ask(principal=AGENT, decision=decision(), call=terminate(*[f"i-{n:017x}" for n in range(200)]))
    body = message(many.approval, "requested")
    assert len(body["blocks"][0]["text"]["text"]) < 3000 and "the console shows them all" in body["text"]
    listed = CliRunner().invoke(approvals_cli.approvals, ["list", "--db", approvals.store.url])
    assert listed.exit_code == 0, listed.output
    assert not any(line.lstrip().startswith(("rule tmp-cleanup", "Approvers:")) for line in listed.output.splitlines())
    # the parameters' line too: a right-to-left override or a zero-width space an agent put in a key
    # is written out there, as on the resource's line, not left to reorder or hide what is read
    hidden = approvals.ask(principal=AGENT, decision=decision(), call=terminate("i-1\u202egpj.exe", "i-\u200b2"))
    params_line = [line for line in message(hidden.approval, "requested")["text"].splitlines()
                   if line.startswith("Parameters:")][0]
    assert "\u202e" not in params_line and "\u200b" not in params_line, params_line
    assert "i-1\\u202egpj.exe" in params_line and "i-\\u200b2" in params_line, params_line
