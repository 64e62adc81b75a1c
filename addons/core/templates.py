"""Secrets written in a CloudFormation template.

A template is one string member (``TemplateBody``) to the rest of the masking, read by the
detectors, which find a secret by its form or by a key that ends in a secret word: a NoEcho
parameter's ``Default`` and a literal ``SecretString`` have neither. Where the template parses (JSON,
or YAML with the short-form tags ``!Ref``, ``!Sub``, ...), ``secrets`` finds the values that are
secrets by where they sit: the ``Default`` and ``AllowedValues`` of a parameter marked ``NoEcho``,
and the resource properties of ``PROPERTIES``, when they are literals. A reference (``!Ref``,
``{"Fn::...": ...}``, ``{{resolve:...}}``) is no secret and stays. Each is found with its place in
the text, so the caller replaces the value's text there and keeps the rest of the template, its
comments and layout, as written. ``noecho`` names the parameters a template marks ``NoEcho``: the
values a call gives them beside the template (``Parameters[].ParameterValue``) are secrets too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Iterator

import yaml

MEMBERS = frozenset({"TemplateBody", "ExecutionRoleTemplateBody"})  # cloudformation's TemplateBody shape
SIZE_LIMIT = 1 << 20  # characters; a template body is at most 51,200 bytes, one in S3 1 MB

_FUNCTION_ENV = "function environment variables hold credentials and connection strings"
_CONTAINER_ENV = "container environment variables hold credentials and connection strings"
_MASTER_PASSWORD = "a database master password"

# (resource type, property path, reason). A path names properties by their keys; ``[]`` walks a
# list, ``*`` every value of a mapping. The names are those the gateway curates for the calls
# themselves (masking.CURATED), where the template's resource makes that call.
PROPERTIES: tuple[tuple[str, str, str], ...] = (
    ("AWS::SecretsManager::Secret", "SecretString", "the secret's value (secretsmanager:CreateSecret's SecretString)"),
    ("AWS::RDS::DBInstance", "MasterUserPassword", _MASTER_PASSWORD),
    ("AWS::RDS::DBCluster", "MasterUserPassword", _MASTER_PASSWORD),
    ("AWS::DocDB::DBCluster", "MasterUserPassword", _MASTER_PASSWORD),
    ("AWS::Redshift::Cluster", "MasterUserPassword", _MASTER_PASSWORD),
    ("AWS::IAM::User", "LoginProfile.Password", "a console password (iam:CreateLoginProfile's Password)"),
    ("AWS::Lambda::Function", "Environment.Variables.*", _FUNCTION_ENV),
    ("AWS::Serverless::Function", "Environment.Variables.*", _FUNCTION_ENV),
    ("AWS::ECS::TaskDefinition", "ContainerDefinitions[].Environment[].Value", _CONTAINER_ENV),
    ("AWS::Batch::JobDefinition", "ContainerProperties.Environment[].Value", _CONTAINER_ENV),
    ("AWS::CodeBuild::Project", "Environment.EnvironmentVariables[].Value",
     "build environment variables (a PARAMETER_STORE or SECRETS_MANAGER one names where the secret is)"),
    ("AWS::Glue::Job", "DefaultArguments.*", "job arguments hold credentials (--db-password ...)"),
    ("AWS::AmazonMQ::Broker", "Users[].Password", "a broker user's password"),
    ("AWS::EC2::VPNConnection", "VpnTunnelOptionsSpecifications[].PreSharedKey", "a VPN tunnel's pre-shared key"),
    ("AWS::DMS::Endpoint", "Password", "a database endpoint's password"),
)

_BY_TYPE: dict[str, list[tuple[tuple[str, ...], str]]] = {}
for _type, _path, _reason in PROPERTIES:
    _BY_TYPE.setdefault(_type, []).append((tuple(_path.replace("[]", ".[]").split(".")), _reason))


@dataclasses.dataclass(frozen=True)
class Secret:
    start: int  # the value's text in the template, quotes included
    end: int
    value: str
    where: str  # "noecho" or "property"
    path: str  # where it sits (Parameters.DbPassword.Default): names, never a value
    reason: str


class _Loader(yaml.SafeLoader):
    """Composes (never constructs) nodes: any tag, !Ref and !Sub included, is kept as it is."""


@functools.lru_cache(maxsize=2)  # a call's template is read for its parameters and its body, twice each
def _compose(text: str) -> yaml.Node | None:
    try:
        json.loads(text)
        # JSON is YAML but for tabs between tokens; outside strings (JSON's have none raw) a
        # space stands for one at the same place
        text = text.replace("\t", " ")
    except ValueError:
        pass
    try:
        return yaml.compose(text, Loader=_Loader)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None


def _get(node: yaml.Node, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def _intrinsic(node: yaml.Node) -> bool:
    """A reference rather than a value: a short-form tag or ``{"Ref"|"Fn::...": ...}``."""
    if node.tag.startswith("!"):
        return True
    if isinstance(node, yaml.MappingNode) and len(node.value) == 1:
        key = node.value[0][0]
        return isinstance(key, yaml.ScalarNode) and (key.value == "Ref" or key.value.startswith("Fn::")
                                                      or key.value == "Condition")
    return False


def _literal(node: yaml.Node) -> bool:
    return (isinstance(node, yaml.ScalarNode) and not node.tag.startswith("!") and node.value != ""
            and "{{resolve:" not in node.value)


def _walk(node: yaml.Node, steps: tuple[str, ...], path: str, seen: set[int]) -> Iterator[tuple[yaml.Node, str]]:
    """The nodes at ``steps`` below ``node`` (each once: an alias is one node)."""
    if id(node) in seen and not steps:
        return
    if not steps:
        seen.add(id(node))
        yield node, path
        return
    if _intrinsic(node):
        return
    step, rest = steps[0], steps[1:]
    if step == "[]":
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                yield from _walk(item, rest, path + "[]", seen)
    elif step == "*":
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                yield from _walk(value, rest, f"{path}.{getattr(key, 'value', '*')}", seen)
    else:
        child = _get(node, step)
        if child is not None:
            yield from _walk(child, rest, f"{path}.{step}", seen)


def _true(node: yaml.Node | None) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.value.strip().lower() == "true"


def _root(text: str) -> yaml.MappingNode | None:
    if len(text) > SIZE_LIMIT or not text.strip():
        return None
    root = _compose(text)
    return root if isinstance(root, yaml.MappingNode) else None


def _noecho_parameters(root: yaml.MappingNode) -> Iterator[tuple[str, yaml.Node]]:
    parameters = _get(root, "Parameters")
    for key, parameter in parameters.value if isinstance(parameters, yaml.MappingNode) else ():
        if _true(_get(parameter, "NoEcho")):
            yield getattr(key, "value", "*"), parameter


def noecho(text: str) -> frozenset[str]:
    """The names of the parameters the template marks ``NoEcho: true`` (none when it does not parse)."""
    root = _root(text)
    return frozenset(name for name, _ in _noecho_parameters(root)) if root is not None else frozenset()


def secrets(text: str) -> list[Secret] | None:
    """The secrets a template holds by where they sit, in order, or None when it is not a template
    this can read (then the detectors alone read it)."""
    root = _root(text)
    if root is None:
        return None
    found: list[Secret] = []
    seen: set[int] = set()

    def add(node: yaml.Node, where: str, path: str, reason: str) -> None:
        if _literal(node):
            found.append(Secret(node.start_mark.index, node.end_mark.index, node.value, where, path, reason))

    for name, parameter in _noecho_parameters(root):
        reason = "a NoEcho parameter's value (AWS shows it as ****)"
        default = _get(parameter, "Default")
        if default is not None and id(default) not in seen:
            seen.add(id(default))
            add(default, "noecho", f"Parameters.{name}.Default", reason)
        allowed = _get(parameter, "AllowedValues")
        for item in allowed.value if isinstance(allowed, yaml.SequenceNode) else ():
            if id(item) not in seen:
                seen.add(id(item))
                add(item, "noecho", f"Parameters.{name}.AllowedValues[]", reason)
    resources = _get(root, "Resources")
    for key, resource in resources.value if isinstance(resources, yaml.MappingNode) else ():
        kind = _get(resource, "Type")
        properties = _get(resource, "Properties")
        if not isinstance(kind, yaml.ScalarNode) or properties is None:
            continue
        for steps, reason in _BY_TYPE.get(kind.value, ()):
            for node, path in _walk(properties, steps, f"Resources.{getattr(key, 'value', '*')}.Properties", seen):
                add(node, "property", path, reason)
    found.sort(key=lambda s: s.start)
    return found


def replace(text: str, found: list[Secret], marker) -> str:
    """``text`` with each secret's text replaced by its marker (``marker(value)``), double-quoted:
    a string in JSON and in YAML alike; the rest as it was."""
    out, at = [], 0
    for s in found:
        if s.start < at:  # overlapping spans cannot come from one parse; kept safe all the same
            continue
        out.append(text[at:s.start])
        out.append(json.dumps(marker(s.value)))
        if text[s.start:s.end].endswith("\n"):  # a block scalar (|, >) ends with its line
            out.append("\n")
        at = s.end
    out.append(text[at:])
    return "".join(out)
