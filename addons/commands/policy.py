"""``agentgate policy check | explain``: lint the policy files, and show how they decide a call."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

import click

from ..core import identity
from ..core import policy as engine
from ..settings import SettingsError, load_settings

_ACTION = re.compile(r"[A-Za-z0-9-]+:[A-Za-z0-9_-]+")


def _settings_value(name: str, fallback: str | None = None) -> str:
    try:
        return getattr(load_settings(), name)
    except SettingsError as e:
        if fallback is not None:
            return fallback
        raise click.ClickException(str(e)) from None


def _policies_dir(directory: str | None) -> Path:
    path = Path(directory) if directory else Path(_settings_value("policies"))
    if not path.is_dir():
        raise click.ClickException(f"{path} is not a directory of policy files; pass one, or set `policies`")
    return path


def principal_from_claims(claims: Any, groups_claim: str = "groups") -> identity.Principal:
    """The principal the gateway makes of a token's claims (identity.principal_of): ``sub``, the
    groups ``groups_claim`` names (a dotted name walks nested claims, ``realm_access.roles``), and
    every actor of the ``act`` chain (``act.sub``, then the ``act`` nested in it, ...). Its times
    and audience are not checked: the call is described, not authenticated."""
    if not isinstance(claims, dict):
        raise ValueError("the principal file must hold a JSON object of claims, or a token")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise ValueError("the principal's claims have no sub")
    try:
        return identity.principal_of(claims, groups_claim)
    except identity.TokenError as e:
        raise ValueError(e.reason.removeprefix("token is malformed: ")) from None


def _claims_of(principal_file: str) -> Any:
    """The claims a principal file holds: a JSON object of claims, or a token (a JWT, as an agent's
    token file holds it), whose claims are read without checking its signature."""
    try:
        text = Path(principal_file).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise click.ClickException(f"cannot read {principal_file}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise click.ClickException(f"{principal_file} is not JSON: {e}") from None
    if not text.startswith(("{", "[")) and text.count(".") == 2:
        try:
            return identity.parse_token(text)[1]
        except identity.TokenError as e:
            raise click.ClickException(f"{principal_file}: {e.reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise click.ClickException(f"{principal_file} is not JSON: {e}") from None


def _groups_claim(notes: list[str]) -> str:
    """The claim the gateway reads groups from (the groups_claim setting); ``notes`` hears about one
    other than ``groups``, or settings that do not load (then ``groups``)."""
    try:
        claim = load_settings().groups_claim
    except SettingsError as e:
        notes.append(f"groups are read from the claim groups: the settings do not load ({e})")
        return "groups"
    if claim != "groups":
        notes.append(f"groups are read from the claim {claim} (the groups_claim setting)")
    return claim


_ARN_REGION = re.compile(r"arn:([^:]+):[^:]*:([^:]*):")


def described_region(call: Any, region: str | None) -> tuple[str | None, str | None]:
    """The region the gateway would read for a described call, and where it comes from (None: from
    --region). The gateway reads the region of the endpoint the call is sent to (its host, else the
    signature's scope); a description has no endpoint, so: a service whose endpoint is global (IAM,
    Route 53, CloudFront, ...) has the one region its calls are signed for in the partition of
    --region or of the call's ARNs (aws when neither names one), whatever region the SDK is set to;
    else --region; else the region the call's ARNs name, when they name one; else none. ValueError
    for a --region that is no region of any AWS partition."""
    from ..core import endpoints
    from ..core.classifier import default_classifier

    named = [m.groups() for m in map(_ARN_REGION.match, getattr(call, "resources", None) or ()) if m]
    if region is not None and (not re.fullmatch(r"[a-z0-9-]{1,40}", region) or endpoints.partition_of(region) is None):
        raise ValueError(f"--region {region!r} is no region of any AWS partition, e.g. us-east-1")
    partition = endpoints.partition_of(region) if region is not None else named[0][0] if named else "aws"
    entry = default_classifier().catalogue.by_name.get(call.service)
    signed = endpoints.global_region(entry.endpoint_prefix if entry else call.service, partition)
    if signed is not None:
        return signed, (f"{call.service}'s endpoint is global: the {partition} partition's calls are signed for "
                        f"{signed}, whatever region the SDK is set to" + ("" if region in (None, signed) else
                                                                          f"; not {region} as --region says"))
    if region is not None:
        return region, None
    regions = sorted({r for _, r in named if r})
    if len(regions) == 1:
        return regions[0], ("the region the call's ARN names; the gateway reads the endpoint's: "
                            "--region names it where it differs")
    if regions:
        return None, f"the call's ARNs name {', '.join(regions)}: give --region, the endpoint's"
    return None, "give --region, the region of the endpoint the call is sent to, which the gateway reads"


def _closest(name: str, names: Any) -> str:
    near = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"; did you mean {near[0]}?" if near else ""


def _operation(text: str) -> tuple[str, str]:
    """(botocore service, operation) from ``SERVICE.Operation`` (the operation in any case)."""
    from ..core import actions
    from ..core.classifier import default_classifier

    service, dot, name = text.partition(".")
    if not dot or not service or not name:
        raise ValueError(f"operation {text!r} is not SERVICE.Operation, e.g. s3.ListObjectsV2")
    services = default_classifier().catalogue.by_name
    if service not in services:
        raise ValueError(f"botocore has no service {service!r}" + _closest(service, services))
    operations = {op.lower(): op for op in actions.service_operations(service)}
    if name.lower() not in operations:
        raise ValueError(f"botocore's {service} has no operation {name!r}" + _closest(name, operations.values()))
    return service, operations[name.lower()]


def call_for_action(action: str | None = None, *, operation: str | None = None, params: dict | None = None,
                    region: str | None = None, account: str | None = None, resources: list[str] | None = None,
                    notes: list[str] | None = None) -> Any:
    """The call the gateway would decide for an IAM action (or a botocore ``SERVICE.Operation``) with
    these parameters, as the classifier makes it: the botocore service and API operation the action
    stands for, the action and access level from IAM's data, the resources and account the
    parameters name (unless given), and what IAM authorises beside or instead of the action (an S3
    copy's source read, an ACL set with an object, a DynamoDB transaction's items, PartiQL
    statements). ``notes`` hears about choices made (an action that stands for several
    operations). ValueError for an action or operation the gateway never names a call by."""
    from ..core import actions
    from ..core import classifier as cl

    params = params or {}
    if operation is None and action is None:
        raise ValueError("give --action or --operation")
    if operation is None and action.lower() == "unknown":
        return cl.Classification(service="unknown", operation="unknown", region=region, account=account,
                                 params=params, resources=list(resources or []), action="unknown",
                                 error="described as unknown on the command line")
    known = engine.KnownActions.get()
    if action is not None:
        if not _ACTION.fullmatch(action):
            raise ValueError(f"action {action!r} is not service:Action, e.g. ec2:TerminateInstances")
        why = known.problem(action)
        if why is not None:
            if operation is None and known.renamed(action):
                prefix, _, name = action.partition(":")
                pairs = actions.operations_named(prefix, name)
                if pairs:
                    why += f" (--operation {pairs[0][0]}.{pairs[0][1]} describes that operation)"
            raise ValueError(why)
    level: str | None
    if operation is not None:
        service, op = _operation(operation)
        named, level = actions.iam_action(service, op)
        if action is not None and named.lower() != action.lower():
            raise ValueError(f"--operation {service}.{op} is the action {named}, not {action}")
        action = named
    else:
        action, level = known.lookup(action)
        level = actions.access_level(level)
        prefix, _, name = action.partition(":")
        pairs = engine.operations_of(action, implied=False)
        direct = list(actions.operations_for(action))
        chosen = next((p for p in direct if p[1].lower() == name.lower()), None) or (direct or pairs or [None])[0]
        if chosen is None:  # no API operation is named so (iam:PassRole, lambda:InvokeFunctionUrl)
            services = actions._services_by_prefix().get(prefix, ())
            service = prefix if prefix in services or len(services) != 1 else services[0]
            op = name
        else:
            service, op = chosen
            others = [f"{s}.{o}" for s, o in pairs if (s, o) != chosen]
            if others and notes is not None:
                notes.append(f"{action} stands for {len(pairs)} operations; described as {service}.{op} "
                             f"(--operation picks another: {_listing(others)})")
    entry = cl.default_classifier().catalogue.by_name.get(service)
    call = cl.Classification(service=service, operation=op, protocol=entry.protocol if entry else None,
                             signing_name=entry.signing_name if entry else service, region=region,
                             account=account, params=params, resources=list(resources or []),
                             action=action, access_level=level)
    if not resources and entry is not None:
        uri: dict = {}
        if entry.protocol.startswith("rest"):
            try:
                uri = cl.default_classifier().routing(service).located(op).uri
            except Exception:  # noqa: BLE001 - an operation botocore does not have: its members only
                uri = {}
        call.resources = cl.resources_of(params, [member for member, _ in uri.values()], service)
    if account is None:
        call.account = cl.account_of(params, call.resources, None)
    try:
        cl.authorised_as(call)  # what the classifier adds to a classified call
    except cl.NotAuthorisable as e:
        raise ValueError(f"--params: {e}: the gateway decides no such call") from None
    return call


def _listing(items: list[str], most: int = 4) -> str:
    return ", ".join(items) if len(items) <= most else f"{', '.join(items[:most - 1])} or {len(items) - most + 1} more"


@click.group()
def policy() -> None:
    """Check policy files, explain how they decide a call, and show the versions that decided calls."""


@policy.command("check")
@click.argument("directory", required=False)
def check_command(directory: str | None) -> None:
    """Check the policy files in DIRECTORY (default: the `policies` setting).

    Reports, with file:line, what would stop them loading (unknown keys, bad globs, bad jmespath,
    bad roles) and what is likely wrong: actions no call is named by (unknown, or an API operation's
    name the gateway names otherwise), session policies that are not IAM policies, rules that can
    never decide or match no known action, mask_for_agent paths that name nothing in an answer,
    names in `when` no call has. Exits non-zero when there are errors; warnings alone pass.
    """
    path = _policies_dir(directory)
    found = engine.check(path, progress=lambda step: click.echo(f"{step}...", err=True))
    errors = [line for line in found if not engine.is_warning(line)]
    warnings = [line for line in found if engine.is_warning(line)]
    for line in found:
        click.echo(line)
    if errors:
        raise click.ClickException(f"{len(errors)} error{'s' if len(errors) != 1 else ''} in {path}"
                                   + (f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})" if warnings else ""))
    policy_set = engine.PolicySet.load(path)
    summary = (f"{len(policy_set.files)} file{'s' if len(policy_set.files) != 1 else ''}, "
               f"{len(policy_set.rules)} rule{'s' if len(policy_set.rules) != 1 else ''}, "
               f"{len(policy_set.roles)} role{'s' if len(policy_set.roles) != 1 else ''}: OK")
    if warnings:
        summary += f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})"
    click.echo(summary + f"; version {policy_set.version}")


@policy.command("versions")
@click.option("--since", default=None, metavar="WHEN", help="Only the versions that decided a call since then.")
@click.option("--until", default=None, metavar="WHEN", help="... and before then.")
@click.option("--db", metavar="URL", default=None, help="The store (default: the db setting, AGENTGATE_DB).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the texts included) instead of a table.")
def versions_command(since: str | None, until: str | None, db: str | None, as_json: bool) -> None:
    """List the policy versions the store keeps: each decided calls, and its text is stored once
    (`agentgate policy show VERSION` prints it). A text that no longer hashes to its version was
    changed after it was stored, and is marked so."""
    from .store import BadInput, _console, _echo_json, _store, fail_unreadable, parse_when

    start = parse_when(since, "--since") if since is not None else None
    end = parse_when(until, "--until") if until is not None else None
    if start and end and start >= end:  # as calls list, export and report: an empty period is a slip, not an answer
        raise BadInput(f"--since ({start.isoformat()}) is not before --until ({end.isoformat()})")
    unreadable: list[str] = []
    with _store(db) as store:
        found = store.policy_versions(since=start, until=end, unreadable=unreadable)
    what = "the versions are listed without the values that cannot be read"
    if as_json:
        _echo_json(found)
        fail_unreadable(unreadable, what)
        return
    if not found:
        click.echo("no policy versions" + (" decided a call in that period" if start or end else " in the store"))
        fail_unreadable(unreadable, what)
        return
    from rich.table import Table

    table = Table(box=None)
    for column in ("version", "first seen", "calls decided", "files", "text"):
        table.add_column(column)
    for v in found:
        files = [line[4:] for line in (v["text"] or "").splitlines() if line.startswith("--- ")]
        table.add_row(v["version"], v["first_seen"] or "", str(v["calls"]), ", ".join(files),
                      "MISSING: the store holds no text of it" if v["missing"] else "as stored" if v["holds"]
                      else "CANNOT BE READ: not stored as text" if v["text"] is None
                      else "CHANGED: does not hash to its version")
    _console(wide=True).print(table)
    fail_unreadable(unreadable, what)
    if any(v["missing"] for v in found):
        missing = next(v for v in found if v["missing"])
        raise click.ClickException(f"calls name policy version {missing['version']}, but the store holds no text of "
                                   "it: it was deleted, or the gateway could not store it; `agentgate verify` "
                                   "reports each such version")
    if not all(v["holds"] for v in found):
        raise click.ClickException("a stored policy text does not hash to its version: it was changed after the "
                                   "gateway stored it; `agentgate verify` checks the records that name it")


@policy.command("show")
@click.argument("version")
@click.option("--db", metavar="URL", default=None, help="The store (default: the db setting, AGENTGATE_DB).")
def show_command(version: str, db: str | None) -> None:
    """Print the text of the policy VERSION (a record's policy_version, or the start of one) as the
    gateway stored it when that version first decided a call: every file, each after a line
    `--- NAME`."""
    from .store import BadInput, _store, fail_unreadable

    if len(version) < 4 or not re.fullmatch(r"[0-9a-f]+", version):
        raise BadInput(f"{version!r} is not a policy version: give the hex digits a record's policy_version has "
                       "(4 at least)")
    unreadable: list[str] = []
    with _store(db) as store:
        found = store.policy_versions(named=version, unreadable=unreadable)
    if not found or (len(found) == 1 and found[0]["text"] is None and not found[0]["missing"]):
        fail_unreadable(unreadable, "no text of it is shown")
    if not found:
        raise click.ClickException(f"no policy version {version} in the store; `agentgate policy versions` lists them")
    if len(found) > 1:
        raise BadInput(f"{version} starts {len(found)} versions ({', '.join(v['version'] for v in found)}): give more "
                       "of it")
    (v,) = found
    if v["missing"]:
        raise click.ClickException(f"{v['calls']} call{'s name' if v['calls'] != 1 else ' names'} policy version "
                                   f"{v['version']}, but the store holds no text of it: it was deleted, or the "
                                   "gateway could not store it")
    click.echo(v["text"], nl=False)
    fail_unreadable(unreadable, "its text is shown above")
    if not v["holds"]:
        raise click.ClickException(f"the stored text of {v['version']} does not hash to its version: it was changed "
                                   "after the gateway stored it")


@policy.command("explain")
@click.option("--principal-file", "principal_file", required=True, type=click.Path(dir_okay=False),
              help='the token\'s claims, as a JSON file {"sub": ..., "groups": [...], "act": {"sub": ...}}, or a '
                   'token file (a JWT, read but not verified): its groups are read from the groups_claim setting')
@click.option("--action", default=None, help="the IAM action, e.g. ec2:TerminateInstances (or unknown)")
@click.option("--operation", default=None, metavar="SERVICE.Operation",
              help="the API operation, as botocore names it, e.g. s3.ListObjectsV2: for an action that stands for "
                   "several operations; the action is then the one the gateway names it")
@click.option("--params", default=None, help="the call's parameters as a JSON object")
@click.option("--region", default=None,
              help="the region of the endpoint the call is sent to (default: a global service's, else the one the "
                   "call's ARNs name; needed when a rule that may decide the call reads region and neither says it)")
@click.option("--account", default=None, help="the 12-digit account the call names (policies read it as `account`)")
@click.option("--resource", "resources", multiple=True, help="a resource name (ARN) the call touches; repeatable")
@click.option("--policies", "directory", default=None, help="policy directory (default: the `policies` setting)")
def explain_command(principal_file: str, action: str | None, operation: str | None, params: str | None, region: str | None,
                    account: str | None, resources: tuple[str, ...], directory: str | None) -> None:
    """Show which rule decides a described call and why, the role it runs as, what is masked, and
    every rule considered.

    The call is made as the gateway's classifier makes it: the botocore service and operation the
    action stands for (--operation names one), the resources and account the parameters name, and
    what IAM authorises beside the action (an S3 copy's source, an ACL written with an object, the
    tagging action of tags set with a create, a ReEncrypt's destination key, a DynamoDB
    transaction's items, PartiQL statements), each decided too. The principal is made as the
    gateway makes it: groups from the groups_claim setting, every actor of a nested act claim.
    The region is the one the gateway would read: --region; else a global service's (IAM:
    us-east-1); else the one the call's ARNs name; else none, which is refused when a rule that may
    decide the call reads region."""
    if action is None and operation is None:
        raise click.UsageError("give --action (an IAM action) or --operation (SERVICE.Operation)")
    claims = _claims_of(principal_file)
    notes: list[str] = []
    try:
        principal = principal_from_claims(claims, _groups_claim(notes))
    except ValueError as e:
        raise click.ClickException(f"{principal_file}: {e}") from None
    call_params: dict = {}
    if params is not None:
        try:
            call_params = json.loads(params)
        except json.JSONDecodeError as e:
            raise click.ClickException(f"--params is not JSON: {e}") from None
        if not isinstance(call_params, dict):
            raise click.ClickException("--params must be a JSON object, e.g. '{\"InstanceIds\": [\"i-1\"]}'")
    try:
        call = call_for_action(action, operation=operation, params=call_params, account=account,
                               resources=list(resources), notes=notes)
        region, region_from = described_region(call, region)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    for part in (call, *(call.implied or ())):
        part.region = region
    path = _policies_dir(directory)
    try:
        policy_set = engine.PolicySet.load(path)
    except engine.PolicyError as e:
        for line in e.errors:
            click.echo(line, err=True)
        raise click.ClickException(f"the policies in {path} do not load; `agentgate policy check {path}` shows why") from None
    if region is None and (reading := policy_set.rules_reading("region", principal, call)):
        rules = f"rule{'s' if len(reading) > 1 else ''} " + _listing([f"{r.id} ({r.where})" for r in reading])
        raise click.ClickException(f"the call names no region, and {rules}, which may decide it, "
                                   f"{'reads' if len(reading) == 1 else 'read'} region: {region_from}")
    if region is None:
        region_from = f"no rule that may decide the call reads it; {region_from}"
    click.echo(engine.explain(policy_set, principal, call, notes=notes, region_from=region_from))
