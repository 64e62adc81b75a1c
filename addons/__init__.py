"""agentgate: a chain of mitmproxy addons between AI agents and the AWS APIs.

Follow one call through the chain in order (``chain()`` below builds it):

1. ``egress``   (http_connect, tls_clienthello, requestheaders) decides where a connection may go:
   AWS hosts are intercepted, hosts on ``allow_hosts`` are tunnelled untouched, everything else is
   refused; and whether a request's body streams (declared payload hash) or is buffered.
2. ``auth``     (http_connect, requestheaders) validates the agent's OIDC token, transport A
   (proxy credentials on CONNECT) or B (the token as the AWS session token), and attaches a
   Principal.
3. ``classify`` (requestheaders/request) resolves service, operation, parameters and IAM action.
4. ``policy``   (requestheaders/request) decides allow, deny or approve and picks the role (an
   access grant in force for the principal replaces it).
5. ``approval`` (requestheaders/request) holds a call whose decision is approve until a human
   approves it (it goes on), denies it, or ``approval_hold`` runs out (ApprovalPending).
6. ``signer``   (requestheaders/request) gets JIT credentials for the role, strips the agent's
   auth, re-signs with botocore's signer and re-targets to ``upstream`` when set; upstream then
   has ``upstream_timeout`` seconds to answer (responseheaders, error).
7. ``masking``  (request, response) masks the call for the record (request and response, always)
   and the response for the agent where the decision's ``mask_for_agent`` names members.
8. ``recorder`` (response, error) writes one Record per flow to the store.

A stage that raises does not let the call go on: the gateway's hook dispatch (addons/fastpath.py)
answers the flow with an AWS-shaped 500 at once (stage.fail_closed); where hooks are dispatched as
mitmproxy does (mitmweb's master under --web, or a mitmproxy the gateway's dispatch does not fit),
each stage's hooks are guarded to do the same (stage.guard, gateway.guard_hooks). The signer
forwards only a call that has a principal, a classification and an allowing decision.

A request whose body streams runs stages 2-6 in ``requestheaders`` (the body goes upstream as it
arrives); every other request runs them in ``request`` with its body in hand.

What one addon tells the next travels in ``flow.metadata`` under one key each:

=====================  ==========  =========================================================
key                    set by      value
=====================  ==========  =========================================================
``agentgate.stream``   egress      True when the request body streams (stages run early)
``agentgate.auth``     egress      core.sigv4.AgentAuth: the agent's own signature, parsed
``agentgate.host``     egress      the original host (before re-targeting to upstream)
``agentgate.principal`` auth       core.identity.Principal
``agentgate.call``     classify    core.classifier.Classification
``agentgate.decision`` policy      core.policy.Decision
``agentgate.policies`` policy      core.policy.PolicySet: the version that decided the call
``agentgate.approval`` approval    core.approvals.Approval: the approval that released (or held,
                       (policy)    or refused) the call; or the access grant it runs under
``agentgate.released`` approval    True once a call whose decision is approve was released
``agentgate.record_id`` approval   the id the call's record gets (an approval it uses names it;
                       (any stage) an answer the gateway makes itself carries it as its request id)
``agentgate.signed``   signer      core.credentials.Grant (role ARN, session id, expiry)
``agentgate.refusal``  any stage   core.awserrors.Refusal, when the flow was answered here
``agentgate.masked``   masking     core.masking.MaskedCall: bodies, headers and parameters as the
                                   record keeps them, what was masked, and why a body is not kept
=====================  ==========  =========================================================
"""


def chain(settings, *, store, policies, validator, broker, approvals=None, notifier=None,
          fingerprint_key: bytes | None = None) -> list:
    """The addons in chain order, built around the shared core objects."""
    from .approval import Approval
    from .auth import Auth
    from .classify import Classify
    from .core.approvals import Approvals
    from .egress import Egress
    from .masking import Masking, SealedKeys
    from .policy import Policy
    from .recorder import Arrivals, Recorder
    from .signer import Signer

    approvals = approvals if approvals is not None else Approvals(store)
    masking = Masking(fingerprint_key)
    recorder = Recorder(store, fail_open=settings.fail_open, masking=masking)
    policy = Policy(policies, approvals, store)
    return [
        Arrivals(recorder),  # a call is in flight from its first hook (a stopping gateway keeps its connection)
        Egress.from_settings(settings),
        Auth(validator),
        Classify(lambda: policies.current.lets_unknown),
        policy,
        Approval(approvals, settings.approval_hold, notifier=notifier, console_url=settings.console_url,
                 mask=lambda call: masking.masker.params(call)[0], redecide=policy.redecide),
        SealedKeys(masking),  # DynamoDB keys and items sealed for the agent (start keys, a batch's unprocessed
        # keys and items), put back before signing
        Signer(broker, settings.upstream, settings.upstream_timeout),
        masking,
        recorder,
    ]
