"""``agentgate policy check | explain``: lint the policy files, and show how they decide a call."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from ..core import policy as engine
from ..settings import SettingsError, load_settings

_ACTION = re.compile(r"[A-Za-z0-9-]+:[A-Za-z0-9_-]+")


@dataclasses.dataclass(frozen=True)
class DescribedPrincipal:
    """A principal built from a claims file, shaped like identity.Principal."""

    sub: str
    iss: str
    aud: tuple[str, ...]
    groups: tuple[str, ...]
    on_behalf_of: str | None
    exp: float
    claims: Mapping[str, Any] = dataclasses.field(compare=False)


@dataclasses.dataclass
class DescribedCall:
    """A call described on the command line, shaped like classifier.Classification."""

    service: str
    operation: str
    protocol: str | None
    signing_name: str | None
    region: str | None
    account: str | None
    params: dict
    resources: list[str]
    action: str
    access_level: str | None
    error: str | None = None


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


def principal_from_claims(claims: Any, groups_claim: str = "groups") -> DescribedPrincipal:
    """A principal from a token's claims (``sub``, the groups claim, ``act.sub``, ``iss``, ``aud``)."""
    if not isinstance(claims, dict):
        raise ValueError("the principal file must hold a JSON object of claims")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise ValueError("the principal's claims have no sub")
    groups = claims.get(groups_claim, [])
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise ValueError(f"the {groups_claim} claim must be a list of strings")
    aud = claims.get("aud", [])
    aud = (aud,) if isinstance(aud, str) else tuple(str(a) for a in aud) if isinstance(aud, list) else ()
    act = claims.get("act")
    on_behalf_of = act.get("sub") if isinstance(act, dict) and isinstance(act.get("sub"), str) else None
    exp = claims.get("exp")
    return DescribedPrincipal(sub=sub, iss=str(claims.get("iss", "")), aud=aud, groups=tuple(groups),
                              on_behalf_of=on_behalf_of,
                              exp=float(exp) if isinstance(exp, (int, float)) else math.inf, claims=claims)


def call_for_action(action: str, *, params: dict | None = None, region: str | None = None,
                    account: str | None = None, resources: list[str] | None = None) -> DescribedCall:
    """A call for an IAM action, with its canonical spelling and access level from IAM's data."""
    if action.lower() == "unknown":
        return DescribedCall("unknown", "unknown", None, None, region, account, params or {}, resources or [],
                             "unknown", None, "described as unknown on the command line")
    if not _ACTION.fullmatch(action):
        raise ValueError(f"action {action!r} is not service:Action, e.g. ec2:TerminateInstances")
    prefix, _, name = action.partition(":")
    prefix = prefix.lower()
    level = None
    known = engine.KnownActions.get().iam.get(prefix.lower(), {}).get(name.lower())
    if known:
        name, level = known
    return DescribedCall(service=prefix, operation=name, protocol=None, signing_name=prefix, region=region,
                         account=account, params=params or {}, resources=resources or [],
                         action=f"{prefix}:{name}", access_level=level)


@click.group()
def policy() -> None:
    """Check policy files, explain how they decide a call, and show the versions that decided calls."""


@policy.command("check")
@click.argument("directory", required=False)
def check_command(directory: str | None) -> None:
    """Check the policy files in DIRECTORY (default: the `policies` setting).

    Reports, with file:line, what would stop them loading (unknown keys, bad globs, bad jmespath,
    bad roles) and what is likely wrong (actions neither IAM's data nor botocore knows, rules that
    can never decide). Exits non-zero when there are errors; warnings alone pass.
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
    from .store import _console, _store, parse_when

    start = parse_when(since, "--since") if since is not None else None
    end = parse_when(until, "--until") if until is not None else None
    with _store(db) as store:
        found = store.policy_versions(since=start, until=end)
    if as_json:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    if not found:
        click.echo("no policy versions" + (" decided a call in that period" if start or end else " in the store"))
        return
    from rich.table import Table

    table = Table(box=None)
    for column in ("version", "first seen", "calls decided", "files", "text"):
        table.add_column(column)
    for v in found:
        files = [line[4:] for line in v["text"].splitlines() if line.startswith("--- ")]
        table.add_row(v["version"], v["first_seen"], str(v["calls"]), ", ".join(files),
                      "as stored" if v["holds"] else "CHANGED: does not hash to its version")
    _console(wide=True).print(table)
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
    from .store import BadInput, _store

    if len(version) < 4 or not re.fullmatch(r"[0-9a-f]+", version):
        raise BadInput(f"{version!r} is not a policy version: give the hex digits a record's policy_version has "
                       "(4 at least)")
    with _store(db) as store:
        found = store.policy_versions(named=version)
    if not found:
        raise click.ClickException(f"no policy version {version} in the store; `agentgate policy versions` lists them")
    if len(found) > 1:
        raise BadInput(f"{version} starts {len(found)} versions ({', '.join(v['version'] for v in found)}): give more "
                       "of it")
    (v,) = found
    click.echo(v["text"], nl=False)
    if not v["holds"]:
        raise click.ClickException(f"the stored text of {v['version']} does not hash to its version: it was changed "
                                   "after the gateway stored it")


@policy.command("explain")
@click.option("--principal-file", "principal_file", required=True, type=click.Path(dir_okay=False),
              help='JSON file of the token\'s claims: {"sub": ..., "groups": [...], "act": {"sub": ...}}')
@click.option("--action", required=True, help="the IAM action, e.g. ec2:TerminateInstances (or unknown)")
@click.option("--params", default=None, help="the call's parameters as a JSON object")
@click.option("--region", default=None)
@click.option("--account", default=None)
@click.option("--resource", "resources", multiple=True, help="a resource name (ARN) the call touches; repeatable")
@click.option("--policies", "directory", default=None, help="policy directory (default: the `policies` setting)")
def explain_command(principal_file: str, action: str, params: str | None, region: str | None,
                    account: str | None, resources: tuple[str, ...], directory: str | None) -> None:
    """Show which rule decides a described call and why, the role it runs as, what is masked, and
    every rule considered."""
    try:
        claims = json.loads(Path(principal_file).read_text(encoding="utf-8"))
    except OSError as e:
        raise click.ClickException(f"cannot read {principal_file}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise click.ClickException(f"{principal_file} is not JSON: {e}") from None
    try:
        principal = principal_from_claims(claims, _settings_value("groups_claim", "groups"))
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
        call = call_for_action(action, params=call_params, region=region, account=account, resources=list(resources))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    path = _policies_dir(directory)
    try:
        policy_set = engine.PolicySet.load(path)
    except engine.PolicyError as e:
        for line in e.errors:
            click.echo(line, err=True)
        raise click.ClickException(f"the policies in {path} do not load; `agentgate policy check {path}` shows why") from None
    click.echo(engine.explain(policy_set, principal, call))
