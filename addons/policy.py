"""policy: decides. Evaluates policies/ (core.policy) for the call and its principal: allow, deny
or approve, with the rule and the policy version; picks the role the call runs as (an access grant
in force for the principal replaces it). Policy files reload on change; a broken change keeps the
last good version in force. An ``approve`` decision goes on to the approval stage."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from mitmproxy import http

from .core.approvals import Approvals, granted_role
from .core.awserrors import Refusal
from .core.policy import PolicyError, PolicySet, PolicyStore
from .stage import APPROVAL, CALL, DECISION, POLICIES, PRINCIPAL, answer, due

log = logging.getLogger("agentgate.policy")


def log_policy_error(error: PolicyError, level: int = logging.ERROR) -> None:
    for line in error.errors:
        log.log(level, "policy change not applied, the last good version stays in force: %s", line)


class PolicyWatch:
    """Looks for policy changes every ``check_interval`` whether calls come or not: a timer on the
    gateway's event loop has ``PolicyStore.check_now`` run in a thread of its own, so that a reload
    (reading and compiling every file) never holds the loop, and every agent's call with it. A new
    version is in force, logged, its text kept in the store and checked within about a second of
    its change, a broken one's errors logged as soon; calls in between are decided by the version
    in force (``PolicyStore.current``, which leaves the looks to this timer)."""

    def __init__(self, policies: PolicyStore) -> None:
        self.policies = policies
        self._executor = None
        self._timer = None
        self._loop = None

    def start(self, loop) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentgate-policy-watch")
        self.policies.timed = True
        self._next()

    def _next(self) -> None:
        if self._executor is not None:
            self._timer = self._loop.call_later(self.policies.check_interval, self._look)

    def _look(self) -> None:
        if self._executor is None:
            return
        try:
            looked = self._loop.run_in_executor(self._executor, self.policies.check_now)
        except RuntimeError:  # stopped meanwhile
            return
        looked.add_done_callback(self._looked)

    def _looked(self, looked) -> None:
        if not looked.cancelled() and looked.exception() is not None:  # a bug: the calls go on looking
            self.policies.timed = False
            log.error("policy files: looking for changes failed (%r); calls look for them from now on",
                      looked.exception())
            return
        self._next()

    def stop(self) -> None:
        """No look after this one; one under way ends by itself (the thread is not waited for)."""
        executor, self._executor = self._executor, None
        self.policies.timed = False
        if self._timer is not None:
            self._timer.cancel()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


_checking = threading.Lock()  # one check at a time

# The check runs in a process of its own, at low priority and first in line for the kernel's
# out-of-memory killer: it reads IAM's data of every service and botocore's models of the services
# the rules name (a few seconds of CPU, up to 200 MB for the shipped policies), which in the
# gateway's process would hold the event loop from the GIL while read and stay in its memory after.
_CHECK_PROGRAM = ("import json, os, sys\n"
                  "from addons.workers import die_with_parent\n"
                  "die_with_parent(int(sys.argv[2]))\n"
                  "os.nice(10)\n"
                  "try:\n"
                  "    with open('/proc/self/oom_score_adj', 'w') as f:\n"
                  "        f.write('1000')\n"
                  "except OSError:\n"
                  "    pass\n"
                  "from addons.core.policy import check\n"
                  "print(json.dumps(check(sys.argv[1])))\n")


def check_findings(directory: str | Path, timeout: float = 600.0) -> list[str]:
    """What ``core.policy.check`` finds in ``directory``, computed in a child process."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # where this ``addons`` package is imported from
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    p = subprocess.run([sys.executable, "-c", _CHECK_PROGRAM, str(directory), str(os.getpid())],
                       capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"exit status {p.returncode}: {p.stderr.strip()[-600:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_in_background(policy_set: PolicySet) -> threading.Thread:
    """Log what ``agentgate policy check`` finds in a policy version the gateway put in force (an
    action no call is named by, a mask path that masks nothing, ...), one WARNING line each. Called
    once per version (``PolicyStore(on_version=...)``); the check runs in a child process
    (``check_findings``), waited for by a thread, on a copy of the version's files (the directory
    may hold the next version by then)."""
    def run() -> None:
        with _checking, tempfile.TemporaryDirectory(prefix="agentgate-policy-check-",
                                                     ignore_cleanup_errors=True) as copy:
            try:
                for name, text in policy_set.sources:  # the version in force, not what the directory holds now
                    path = Path(copy, name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text, encoding="utf-8")
                found = check_findings(copy)
            except Exception as e:  # noqa: BLE001 - the policies are in force whatever the check says
                log.error("policy version %s: the check failed: %s", policy_set.version, e)
                return
        for line in found:
            log.warning("policy version %s: %s", policy_set.version, line)

    thread = threading.Thread(target=run, name=f"policy-check-{policy_set.version}", daemon=True)
    thread.start()
    return thread


class Policy:
    def __init__(self, policies: PolicyStore, grants: Approvals | None = None, store=None) -> None:
        self.policies = policies
        self.grants = grants  # access grants in force: a principal's calls run as the granted role
        self.store = store  # keeps each policy version's text, once
        self.kept: set[str] = set()

    def keep_text(self, current) -> None:
        """Have the text of a policy version stored once it is put in force (``PolicyWatch``), or
        at the latest the first time a call is decided by it: the
        store's writer stores it before it commits the records of the calls it decided, and keeps
        every such version while the store cannot write, so that each version a record names has
        its text in the store (a version in force only while the store was down included). The
        call does not wait for the database here."""
        if self.store is None or current.version in self.kept:
            return
        self.store.keep_policy_version(current.version, current.text)
        self.kept.add(current.version)

    def _decide(self, flow: http.HTTPFlow, current: PolicySet):
        """The decision of ``current`` for the flow's call, with the role an access grant in force for
        the principal gives (then in the flow's APPROVAL)."""
        principal = flow.metadata[PRINCIPAL]
        self.keep_text(current)
        decision = current.evaluate(principal, flow.metadata[CALL])
        if self.grants is not None and (grant := self.grants.grant_for(principal)) is not None:
            if (role := granted_role(current, grant)) is not None:
                decision = dataclasses.replace(decision, role=role)
                flow.metadata[APPROVAL] = grant
        return decision

    def redecide(self, flow: http.HTTPFlow):
        """For a call an earlier policy version decided (one held for approval while a change was put
        in force): (the decision of the version in force now, that version); None while the version
        that decided it is still in force."""
        current = self.policies.current
        decided = flow.metadata.get(POLICIES)
        if decided is None or current.version == decided.version:
            return None
        return self._decide(flow, current), current

    async def _run(self, flow: http.HTTPFlow) -> None:
        principal = flow.metadata[PRINCIPAL]
        call = flow.metadata[CALL]
        current = self.policies.current
        decision = self._decide(flow, current)
        flow.metadata[DECISION] = decision
        flow.metadata[POLICIES] = current
        if decision.decision == "deny":
            rule = f"rule {decision.rule!r}" if decision.rule else "the default rule"
            answer(flow, Refusal(403, "AccessDenied", f"agentgate denied {call.action} by {rule}: {decision.reason}", "policy"))
        elif decision.role is None:  # no binding, nor an access grant, gives the principal a role
            answer(flow, Refusal(403, "AccessDenied", current.no_role_reason(principal), "roles"))

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if due(flow, "requestheaders"):
            await self._run(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        if due(flow, "request"):
            await self._run(flow)
