"""policy: decides. Evaluates policies/ (core.policy) for the call and its principal: allow, deny
or approve, with the rule and the policy version; picks the role the call runs as. Policy files
reload on change; a broken change keeps the last good version in force."""

from __future__ import annotations

import logging

from mitmproxy import http

from .core.awserrors import Refusal
from .core.policy import PolicyError, PolicyStore
from .stage import CALL, DECISION, PRINCIPAL, answer, due

log = logging.getLogger("agentgate.policy")


def log_policy_error(error: PolicyError) -> None:
    for line in error.errors:
        log.error("policy change not applied, the last good version stays in force: %s", line)


class Policy:
    def __init__(self, policies: PolicyStore) -> None:
        self.policies = policies

    def _run(self, flow: http.HTTPFlow) -> None:
        principal = flow.metadata[PRINCIPAL]
        call = flow.metadata[CALL]
        decision = self.policies.current.evaluate(principal, call)
        flow.metadata[DECISION] = decision
        if decision.decision == "deny":
            rule = f"rule {decision.rule!r}" if decision.rule else "the default rule"
            answer(flow, Refusal(403, "AccessDenied", f"agentgate denied {call.action} by {rule}: {decision.reason}", "policy"))
        elif decision.decision == "approve":
            answer(flow, Refusal(403, "AccessDenied", f"{call.action} needs a human approval (rule {decision.rule!r}: "
                                 f"{decision.reason}) and approvals are not enabled on this gateway", "approval"))
        elif decision.role is None:
            answer(flow, Refusal(403, "AccessDenied", f"no role in policies/ is mapped to principal {principal.sub!r}; "
                                 "an operator adds one under `roles`", "roles"))

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if due(flow, "requestheaders"):
            self._run(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if due(flow, "request"):
            self._run(flow)
