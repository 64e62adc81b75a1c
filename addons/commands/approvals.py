"""Commands for approvals and access grants: ``agentgate approvals list|show|approve|deny`` and
``agentgate access request|list|approve|deny|revoke``.

Who acts: the principal of ``--token-file F`` (or ``AGENTGATE_TOKEN_FILE``), an OIDC token
validated like an agent's; or, with ``--admin`` (never implied), the local admin, when
``keys/admin.token`` (written by ``agentgate init``) can be read. Approvals live in the store, so a decision made here releases a
call held by any gateway on that store within a second.

Errors are one line on stderr: exit 1 when the store or the rules say no, 2 for bad input.
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..core.approvals import (Approval, ApprovalError, Approvals, admin_principal, admin_token_matches,
                              describe_approvers, duration_text, find_role, NotFound)
from ..core.store import Store, StoreError, chain_key_path, display_url, load_chain_key
from ..settings import Settings, SettingsError, load_settings
from .store import BadInput, _console, _cut, _echo_json, _line, _short_time, _text, db_option, fail_unreadable, json_option

limit_option = click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
                            help="At most this many, newest first.")
token_option = click.option(
    "--token-file", metavar="FILE", default=None, envvar="AGENTGATE_TOKEN_FILE",
    help="Your OIDC token (default: AGENTGATE_TOKEN_FILE).")
admin_option = click.option(
    "--admin", is_flag=True, default=False,
    help="Act as the local admin (keys/admin.token), who may decide any approval; never implied.")


def _settings(db: str | None) -> Settings:
    try:
        return load_settings(db=db)
    except SettingsError as e:
        raise click.ClickException(str(e)) from None


def _chain_key(settings: Settings) -> bytes | None:
    """The chain key, where this machine holds it (the gateway's keys directory): it keys the
    approval events a decision here appends. Without it no decision is made on a store whose
    events are keyed (core.approvals refuses it: a gateway would release nothing on it)."""
    try:
        return load_chain_key(chain_key_path(settings.keys))
    except StoreError as e:
        click.echo(f"agentgate: warning: {e}; the approval events this command writes are not keyed", err=True)
        return None


@contextmanager
def _approvals(settings: Settings, grants: bool = False) -> Iterator[Approvals]:
    store = None
    try:
        store = Store(settings.db, chain_key=_chain_key(settings))
        store._check_schema()
        yield Approvals(store)
    except NotFound as e:  # perhaps the gateway writes to another store than this command reads
        said = (f"there is no access grant {e.approval_id!r}: `agentgate access list` shows them" if grants
                else str(e))
        raise click.ClickException(f"{said} (this is the store at {store.where}; a gateway on another store: give "
                                   "--db URL, or set db in agentgate.toml or AGENTGATE_DB)") from None
    except (StoreError, ApprovalError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        if store is not None:
            store.engine.dispose()


def _validate(settings: Settings, token: str) -> Any:
    from ..core.identity import TokenError, TokenValidator

    if not settings.oidc_issuer:
        raise click.ClickException("oidc_issuer is not set, so no OIDC token can be checked: set it in agentgate.toml")

    async def check() -> Any:
        validator = TokenValidator(settings.oidc_issuer, settings.audiences,
                                   algorithms=tuple(settings.oidc_algorithms), groups_claim=settings.groups_claim,
                                   leeway=settings.oidc_leeway)
        try:
            return await validator.validate(token)
        finally:
            await validator.aclose()

    try:
        return asyncio.run(check())
    except TokenError as e:
        raise click.ClickException(f"your token was refused: {e.reason}") from None


def _identity(settings: Settings, token_file: str | None, *, admin: bool = False, admin_allowed: bool = True) -> Any:
    """The principal acting: the OIDC token in ``token_file``, or the local admin when asked for
    (``--admin``). Never the admin by default: an agent that runs as the gateway's user, reading an
    ApprovalPending error that names the command, must not approve its own call by running it."""
    if token_file and admin:
        raise BadInput("give --token-file F or --admin, not both")
    if token_file:
        from ..core.tokenfile import TokenFileError, read_token_file

        try:
            token = read_token_file(token_file)
            mode = os.stat(token_file).st_mode
        except TokenFileError as e:
            raise BadInput(str(e)) from None
        except OSError as e:
            raise BadInput(f"cannot read the token file {token_file}: {e.strerror}") from None
        if mode & 0o077:
            click.echo(f"agentgate: warning: the token file {token_file} can be read by other users (mode "
                       f"{mode & 0o777:o}): a token is a credential; chmod 600 it", err=True)
        admin = Path(settings.keys) / "admin.token"
        if admin_allowed and admin.exists() and admin_token_matches(token, _read(admin)):
            return admin_principal()
        return _validate(settings, token)
    if not admin_allowed:
        raise BadInput("give --token-file F (or AGENTGATE_TOKEN_FILE): the principal's own OIDC token")
    path = Path(settings.keys) / "admin.token"
    if not admin:
        raise BadInput("give --token-file F (your OIDC token, or AGENTGATE_TOKEN_FILE), or --admin to act as the "
                       f"local admin ({path})")
    if not os.access(path, os.R_OK):
        raise BadInput(f"--admin: the local admin token {path} cannot be read here")
    return admin_principal()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _notify(settings: Settings, a: Approval, event: str) -> None:
    if not settings.webhook_url:
        return
    from ..notify import message, send

    if not send(settings.webhook_url, message(a, event, settings.console_url)):
        click.echo(f"warning: the webhook did not take the message about {a.id}", err=True)


# -- showing approvals ---------------------------------------------------------------------------


def _what(a: Approval) -> str:
    if a.kind == "grant":
        return f"access as {a.role} for {duration_text(a.duration)}"
    return a.action


def _table(rows: list[Approval]) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("requested (UTC)", no_wrap=True, min_width=19)
    for name in ("principal", "asks for", "resource", "parameters", "rule", "approver"):
        table.add_column(name, overflow="fold")
    table.add_column("expires (UTC)", no_wrap=True, min_width=19)
    for a in rows:
        who = a.principal + (f" (for {a.on_behalf_of})" if a.on_behalf_of else "")
        table.add_row(a.id, a.state(), _short_time(a.as_dict()["requested"]), _line(who), _line(_what(a)),
                      "" if a.kind == "grant" else _line(a.resource),
                      "" if a.kind == "grant" else _line(_params_line(a.params)),
                      _line(a.rule), _line(a.approver), _short_time(a.as_dict()["expires"]))
    return table


def _params_line(params: Any, width: int = 120) -> str:
    """An approval's parameters in one line, so that two asks on one resource tell apart (a version,
    a governance bypass); `approvals show` has them whole."""
    text = json.dumps(params, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)
    return text if len(text) <= width else text[:width - 1] + "…"


# the column each line of `approvals show` shows, where it shows one
_COLUMN_OF = {"principal": "principal", "issuer": "issuer", "role": "role", "for": "duration", "role binding": "rule",
              "reason": "request_reason", "action": "action", "service": "service", "operation": "operation",
              "region": "region", "resource": "resources", "rule": "rule", "rule reason": "request_reason",
              "parameters": "params", "usable for": "duration", "approvers": "approvers",
              "policy version": "policy_version", "requested": "requested", "expires": "expires",
              "approver's reason": "reason", "used": "used", "revoke reason": "revoke_reason"}


def _details(a: Approval, calls: list[dict[str, Any]], history: list[dict[str, Any]]) -> Table:
    d = a.as_dict()
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    who = (a.principal or "") + (f" (on behalf of {a.on_behalf_of})" if a.on_behalf_of else "")
    rows: list[tuple[str, Any]] = [("id", a.id), ("kind", "access grant" if a.kind == "grant" else "call"),
                                   ("state", a.state()), ("principal", who), ("issuer", a.issuer)]
    if a.kind == "grant":
        rows += [("role", a.role), ("for", duration_text(a.duration)), ("role binding", a.rule),
                 ("reason", a.request_reason)]
    else:
        rows += [("action", a.action), ("service", a.service), ("operation", a.operation), ("region", a.region),
                 ("resource", a.resource), ("role", a.role), ("rule", a.rule), ("rule reason", a.request_reason),
                 ("parameters", json.dumps(a.params, ensure_ascii=False, indent=2)),
                 ("usable for", f"{duration_text(a.duration)} once approved")]
    rows += [("approvers", describe_approvers(a.approvers)), ("policy version", a.policy_version),
             ("requested", d["requested"]), ("expires", d["expires"])]
    if a.decided:
        rows += [("decided", f"{d['decided']} by {a.approver} ({a.channel})"), ("approver's reason", a.reason)]
    if a.used:
        rows.append(("used", d["used"]))
    if a.revoked:
        rows += [("revoked", f"{d['revoked']} by {a.revoked_by}"), ("revoke reason", a.revoke_reason)]
    for e in history:
        by = f" by {e['actor']}" if e["actor"] else ""
        how = f" ({e['channel']})" if e["channel"] else ""
        why = f": {e['reason']}" if e["reason"] and e["event"] != "requested" else ""
        rows.append(("history", f"{_short_time(e['time'])}  {e['event']}{by}{how}{why}"))
    for c in calls:
        rows.append(("call", f"{_short_time(c['time'])}  {c['id']}  {c['outcome'] or ''} {c['status'] or ''}".rstrip()))
    if a.unread:  # each value that cannot be read said so, in its place or after the rest
        rows = [(k, "(cannot be read)" if _COLUMN_OF.get(k) in a.unread else v) for k, v in rows]
        shown = {_COLUMN_OF.get(k) for k, _ in rows}
        rows += [(name, "(cannot be read)") for name in sorted(a.unread) if name not in shown]
    for k, v in rows:
        table.add_row(k, _text(v) if k == "parameters" else _line(v))  # the parameters' JSON is the one text of lines
    return table


def _list(db: str | None, pending: bool, active: bool, kind: str | None, limit: int, as_json: bool) -> None:
    settings = _settings(db)
    unreadable: list[str] = []
    with _approvals(settings) as approvals:
        rows = approvals.list(pending=pending, active=active, kind=kind, limit=limit + 1, unreadable=unreadable)
    more = len(rows) > limit
    rows = rows[:limit]
    if as_json:
        _echo_json([a.as_dict() for a in rows])
    else:
        empty = "nothing is pending" if pending else "none in force" if active else "none"
        if not rows:
            _console(wide=True).print(f"{empty}{' that can be read' if unreadable else ''} in the store at "
                                      f"{display_url(settings.db)}")
        else:
            _console(wide=True).print(_table(rows))
            click.echo(f"({len(rows)} from the store at {display_url(settings.db)})", err=True)
    if more:
        _cut(f"only the newest {limit} are listed; the store holds more: --limit raises the number")
    fail_unreadable(unreadable, "left out of the list")


def _show(approval_id: str, db: str | None, as_json: bool, grants: bool = False) -> None:
    settings = _settings(db)
    unreadable: list[str] = []
    with _approvals(settings, grants) as approvals:
        a = approvals.get(approval_id, unreadable)
        if a is None:
            approvals.require(approval_id)  # its NotFound, with the hint of another store
        _of_kind(a, grants)
        calls = approvals.calls_for(approval_id, unreadable=unreadable)
        history = approvals.history(approval_id, unreadable)
    what = "the approval, its history and its calls are shown without the values that cannot be read"
    if as_json:
        d = a.as_dict()
        _echo_json({**{k: v for k, v in d.items() if k not in a.unread}, "history": history, "calls": calls})
    else:
        _console().print(_details(a, calls, history))
    fail_unreadable(unreadable, what)


def _of_kind(a: Approval, grants: bool) -> None:
    """Refuse an approval of a call given to an `access` command (`approvals` takes both kinds)."""
    if grants and a.kind != "grant":
        raise click.ClickException(f"{a.id} is an approval of a call, not an access grant: use "
                                   f"`agentgate approvals` (show, approve, deny, revoke {a.id})")


def _decide(approval_id: str, approve: bool, reason: str | None, token_file: str | None, db: str | None,
            grants: bool = False, admin: bool = False) -> None:
    settings = _settings(db)
    if not approve and not (reason or "").strip():
        raise BadInput("--reason is required to deny: the agent's error shows it")
    approver = _identity(settings, token_file, admin=admin)
    with _approvals(settings, grants) as approvals:
        _of_kind(approvals.require(approval_id), grants)
        a = approvals.decide(approval_id, approver, approve=approve, reason=reason, channel="cli")
    verb = "approved" if approve else "denied"
    if a.kind == "grant":
        tail = f"; {a.principal}'s calls run as {a.role} until {a.as_dict()['expires']}" if approve else ""
    else:
        tail = f"; the held call goes on, or its retry before {a.as_dict()['expires']}" if approve else ""
    click.echo(f"{a.id} {verb} by {a.approver}{tail}")
    _notify(settings, a, "decided")


# -- approvals ------------------------------------------------------------------------------------


@click.group("approvals")
def approvals() -> None:
    """Calls held for a human: list, show, approve, deny, revoke."""


@approvals.command("list")
@click.option("--pending", is_flag=True, help="Only those waiting for a decision.")
@click.option("--kind", type=click.Choice(["call", "grant"]), default=None,
              help="Only approvals of calls, or access grants.")
@limit_option
@db_option
@json_option
def approvals_list(pending: bool, kind: str | None, limit: int, db: str | None, as_json: bool) -> None:
    """List approvals, newest first."""
    _list(db, pending, False, kind, limit, as_json)


@approvals.command("show")
@click.argument("approval_id", metavar="ID")
@db_option
@json_option
def approvals_show(approval_id: str, db: str | None, as_json: bool) -> None:
    """Show one approval: who asks, what exactly (masked parameters), the rule, the calls under it."""
    _show(approval_id, db, as_json)


@approvals.command("approve")
@click.argument("approval_id", metavar="ID")
@click.option("--reason", default=None, help="Why; kept with the approval.")
@token_option
@admin_option
@db_option
def approvals_approve(approval_id: str, reason: str | None, token_file: str | None, db: str | None,
                      admin: bool) -> None:
    """Approve a pending call (or access grant): the held call goes on, or its retry, once."""
    _decide(approval_id, True, reason, token_file, db, admin=admin)


@approvals.command("deny")
@click.argument("approval_id", metavar="ID")
@click.option("--reason", required=True, help="Why; the agent's error shows it.")
@token_option
@admin_option
@db_option
def approvals_deny(approval_id: str, reason: str, token_file: str | None, db: str | None,
                   admin: bool) -> None:
    """Deny a pending call (or access grant): the agent gets ApprovalDenied with the reason."""
    _decide(approval_id, False, reason, token_file, db, admin=admin)


@approvals.command("revoke")
@click.argument("approval_id", metavar="ID")
@click.option("--reason", default=None, help="Why; kept with the approval.")
@token_option
@admin_option
@db_option
def approvals_revoke(approval_id: str, reason: str | None, token_file: str | None, db: str | None,
                     admin: bool) -> None:
    """Withdraw an approval its call has not used yet (a retry then asks anew), or end an access grant."""
    _revoke(approval_id, reason, token_file, db, grants=False, admin=admin)


# -- access grants ----------------------------------------------------------------------------------


@click.group("access")
def access() -> None:
    """Time-bound access grants: a principal's calls run as a role until the grant ends."""


@access.command("request")
@click.option("--role", required=True, metavar="ROLE",
              help="A role binding's id in the policies' roles, or its role ARN.")
@click.option("--for", "for_", required=True, metavar="DURATION", help="How long, once approved: 30m, 2h, 900.")
@click.option("--reason", required=True, help="Why; the approvers see it.")
@click.option("--token-file", metavar="FILE", default=None, envvar="AGENTGATE_TOKEN_FILE",
              help="Your own OIDC token, required (default: AGENTGATE_TOKEN_FILE): the grant is for the principal "
                   "it names, so the local admin token does not do.")
@db_option
def access_request(role: str, for_: str, reason: str, token_file: str | None, db: str | None) -> None:
    """Ask for your calls to run as ROLE for a while; an approver decides."""
    from ..core.policy import PolicyError, PolicySet, parse_duration

    settings = _settings(db)
    try:
        seconds = parse_duration(for_)
    except ValueError:
        raise BadInput(f"--for {for_!r} is not a duration: write 30m, 2h or 900") from None
    if not 60 <= seconds <= settings.grant_max:
        raise BadInput(f"--for must be between 1m and {duration_text(int(settings.grant_max))} (grant_max), not {for_}")
    if not reason.strip():
        raise BadInput("--reason must say why")
    try:
        policy_set = PolicySet.load(settings.policies)
    except PolicyError as e:
        raise click.ClickException(f"the policies in {settings.policies} do not load: {e.errors[0]}") from None
    binding = find_role(policy_set, role)
    if binding is None:
        known = sorted({b for e in policy_set.roles for b in (e.binding.rule_id, e.binding.role_arn) if b})
        raise BadInput(f"--role {role!r} is not among the roles in {settings.policies}: "
                       + (", ".join(known) if known else "there are none"))
    principal = _identity(settings, token_file, admin_allowed=False)
    with _approvals(settings) as store:
        asked = store.request_grant(principal, role_arn=binding.role_arn, role_id=binding.rule_id, duration=seconds,
                                    reason=reason.strip(), approvers={"groups": list(settings.grant_approvers)},
                                    policy_version=policy_set.version)
    a = asked.approval
    already = "" if asked.created else " (already asked)"
    click.echo(f"{a.id}: access as {a.role} for {duration_text(a.duration)} is pending{already}; an approver "
               f"({describe_approvers(a.approvers)}) runs `agentgate access approve {a.id} --token-file <their token>`")
    if asked.created:
        _notify(settings, a, "requested")


@access.command("list")
@click.option("--active", is_flag=True, help="Only grants in force.")
@click.option("--pending", is_flag=True, help="Only requests waiting for a decision.")
@limit_option
@db_option
@json_option
def access_list(active: bool, pending: bool, limit: int, db: str | None, as_json: bool) -> None:
    """List access grants and requests, newest first."""
    _list(db, pending, active, "grant", limit, as_json)


@access.command("show")
@click.argument("grant_id", metavar="ID")
@db_option
@json_option
def access_show(grant_id: str, db: str | None, as_json: bool) -> None:
    """Show one access grant."""
    _show(grant_id, db, as_json, grants=True)


@access.command("approve")
@click.argument("grant_id", metavar="ID")
@click.option("--reason", default=None, help="Why; kept with the grant.")
@token_option
@admin_option
@db_option
def access_approve(grant_id: str, reason: str | None, token_file: str | None, db: str | None,
                   admin: bool) -> None:
    """Approve an access request: the grant starts now and lasts what was asked."""
    _decide(grant_id, True, reason, token_file, db, grants=True, admin=admin)


@access.command("deny")
@click.argument("grant_id", metavar="ID")
@click.option("--reason", required=True, help="Why.")
@token_option
@admin_option
@db_option
def access_deny(grant_id: str, reason: str, token_file: str | None, db: str | None,
                admin: bool) -> None:
    """Deny an access request."""
    _decide(grant_id, False, reason, token_file, db, grants=True, admin=admin)


@access.command("revoke")
@click.argument("grant_id", metavar="ID")
@click.option("--reason", default=None, help="Why; kept with the grant.")
@token_option
@admin_option
@db_option
def access_revoke(grant_id: str, reason: str | None, token_file: str | None, db: str | None,
                  admin: bool) -> None:
    """End an access grant now (its grantee, an approver, or the local admin)."""
    _revoke(grant_id, reason, token_file, db, grants=True, admin=admin)


def _revoke(approval_id: str, reason: str | None, token_file: str | None, db: str | None, grants: bool,
            admin: bool = False) -> None:
    settings = _settings(db)
    by = _identity(settings, token_file, admin=admin)
    with _approvals(settings, grants=grants) as store:
        _of_kind(store.require(approval_id), grants)
        a = store.revoke(approval_id, by, reason=reason, channel="cli")
    if a.kind == "grant":
        click.echo(f"{a.id} revoked by {a.revoked_by}: {a.principal}'s calls no longer run as {a.role}")
    elif a.approver is None:
        click.echo(f"{a.id} withdrawn by {a.revoked_by} before anyone decided it: a retry of its call asks for a new "
                   "approval")
    else:
        click.echo(f"{a.id} revoked by {a.revoked_by}: its call has not run, and a retry asks for a new approval")
    _notify(settings, a, "decided")


COMMANDS = (approvals, access)
