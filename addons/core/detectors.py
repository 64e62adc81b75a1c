"""Detectors: secrets in free text, where no model says a member is sensitive.

Each detector names what it found and where (a span of the text); the masking engine replaces the
span with a marker. They look for what is a secret by its form, and stay clear of what is not:
account ids, ARNs, request ids, UUIDs, timestamps, resource ids, pagination tokens and digests
(``tests/test_masking_corpus.py`` holds them to that over a corpus of AWS responses).

============================  ==================================================================
detector                      finds
============================  ==================================================================
``private-key``               PEM and PGP private key blocks (``-----BEGIN ... PRIVATE KEY-----``)
``jwt``                       JSON Web Tokens, signed (three parts) or encrypted (five)
``aws-session-token``         AWS session tokens (``IQoJb3JpZ2lu...``, ``FwoGZXIvYXdz...``)
``aws-secret-access-key``     40-character secret access keys: after a key word, or standing
                              alone with the mix of characters and entropy of a random key
``url-password``              the password of ``scheme://user:password@host``
``bearer-token``              ``Bearer <token>``
``assignment``                the value of ``password=``, ``secret:``, ``token=``, ``api_key=``,
                              ``X-Amz-Signature=``... (connection strings, config text, URLs),
                              of ``<password>...</password>`` and of a .netrc ``login u password p``
``vendor-token``              tokens that say whose they are: GitHub (``ghp_``, ``github_pat_``),
                              GitLab (``glpat-``), Slack (``xoxb-``...), Stripe (``sk_live_``),
                              Google API keys (``AIza``), npm (``npm_``), Anthropic and OpenAI
                              (``sk-ant-``, ``sk-proj-``)
``named-secret``              a whole value whose name says it is a secret (``secret_name``):
                              ``DB_PASSWORD``, ``--db_password``, ``ClientSecret``, ``HECToken``,
                              ``javax.jdo.option.ConnectionPassword``; the name is the member's,
                              a map entry's key, or the name member of a ``{Name, Value}`` pair
                              (``named_value``), or a message attribute's name for its
                              ``StringValue`` (``named_attribute``). A random password has no
                              form to find it by.
============================  ==================================================================

``suspicious(text)`` is the quick test over a whole raw body: False means no detector can find
anything in any string of it, so the body need not be parsed for detection.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections import Counter
from collections.abc import Mapping

MARKER_PREFIX = "agentgate:masked"  # the record's markers (":hmac-...") and the agent's, which hide no secret

PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.S,
)
JWT = re.compile(
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\."
    r"(?:eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*|[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)"
)
SESSION_TOKEN_PREFIXES = ("IQoJb3JpZ2lu", "FwoGZXIvYXdz", "FQoGZXIvYXdz", "AQoDYXdz", "AgoJb3JpZ2lu")
SESSION_TOKEN = re.compile(
    r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]{40})(?:" + "|".join(SESSION_TOKEN_PREFIXES) + r")[A-Za-z0-9/+=]*"
)
SECRET_KEY = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
SECRET_KEY_CONTEXT = re.compile(r"(?i)secret[A-Za-z0-9_ -]{0,24}(?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?$")
URL_PASSWORD = re.compile(r"(?i)\b[a-z][a-z0-9+.-]{0,30}://[^\s/?#@:\"'<>]*:(?P<value>[^\s/?#@\"'<>]+)@")
BEARER = re.compile(r"(?i)\bbearer\s+(?P<value>(?=[A-Za-z._~+/=-]*[0-9])[A-Za-z0-9._~+/=-]{16,})")
VENDOR_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_-])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}|glpat-[A-Za-z0-9_-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|(?:sk|rk)_live_[A-Za-z0-9]{16,}|AIza[0-9A-Za-z_-]{35}|npm_[A-Za-z0-9]{36}"
    r"|sk-(?:ant|proj)-[A-Za-z0-9_-]{20,})(?![A-Za-z0-9_-])"
)
_VENDOR_HINT = re.compile(r"gh[pousr]_|github_pat_|glpat-|xox[abposr]-|_live_|AIza|npm_|sk-ant-|sk-proj-")
XML_SECRET = re.compile(r"(?i)<(?P<tag>password|passwd|passphrase|secret|token|api[_-]?key|private[_-]?key)>"
                        r"(?P<value>[^<\s][^<]*)</(?P=tag)>")
NETRC_PASSWORD = re.compile(r"(?<![A-Za-z0-9])(?:machine\s+\S+|default)\s+login\s+\S+\s+password\s+(?P<value>\S+)")
KEY_WORDS = (r"password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
             r"|signature")
# The value is on the key's line: a key that ends its line (YAML's ``DbPassword:`` opening a mapping,
# an empty ``DB_PASSWORD=`` in an env file) holds no value, and the next line is not its value.
ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?P<key>[A-Za-z0-9_.-]{0,40}?(?:" + KEY_WORDS + r"))"
    r"(?:\\?[\"'])?\s*(?:=|:(?=\s|\\?[\"']))[^\S\r\n]*(?:\\?[\"'])?"
    r"(?P<value>[^\s\"'\\&;,<>{}()\[\]$%][^\s\"'\\&;,<>{}()\[\]]*)"
)
KEY_WORD_HINTS = ("pass", "pwd", "secret", "token", "key", "signature")
# The quick test: a key word right before = or :. In raw JSON a member name is followed by a bare
# quote, so there it does not count; an escaped quote, inside a string, does.
_KEY_WORDS_AT = r"(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|signature)"
ASSIGNMENT_AT = re.compile(_KEY_WORDS_AT + r"""(?:\\?["'])?\s*(?:=|:(?=\s|\\?["']))""")
ASSIGNMENT_AT_JSON = re.compile(_KEY_WORDS_AT + r"""(?:\\["']|')?\s*(?:=|:(?=\s|\\?["']))""")
# a CloudFormation template's short-form function (``MasterUserPassword: !Ref DbPassword``) names
# where the value comes from: no secret
INTRINSIC_TAG = re.compile(r"!(?:Ref|Sub|GetAtt|Join|Select|Split|If|FindInMap|ImportValue|Base64|Cidr|GetAZs"
                           r"|Transform|And|Equals|Not|Or|Condition|Length|ToJsonString|ForEach)")
URL_PASSWORD_HINT = re.compile(r"""://[^\s/?#@"'<>]*:[^\s/?#@"'<>]+@""")
_STEMS = ("pass", "pwd", "secret", "token", "signature", "key")
_KEY_STARTS = (3, 4, 6, 7, 8)  # where a key word ending in "key" starts: api, api_, access, access_, private(_)
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+")
_RUNS = bytes(0x61 if c in _B64 else 0x20 for c in range(256))  # base64 characters -> "a", others -> " "
_SESSION_PREFIXES = tuple(p.encode() for p in SESSION_TOKEN_PREFIXES)

# Names (of the assignment's key, or of the member holding a value) that hold no secret although a
# key word is in them: pagination and idempotency tokens, token metadata.
NOT_SECRET_KEYS = frozenset(
    {"nexttoken", "continuationtoken", "nextcontinuationtoken", "paginationtoken", "pagetoken", "nextpagetoken",
     "starttoken", "clienttoken", "idempotencytoken", "clientrequesttoken", "tokentype", "maxtokens", "tokencount",
     "nextforwardtoken", "nextbackwardtoken", "nextsequencetoken", "sequencetoken", "uploadsequencetoken",
     "signatureversion", "signaturemethod"}
)
# Members whose values are identifiers, digests or cursors: a 40-character value there is not an
# access key standing alone.
NOT_KEY_MEMBER = re.compile(
    r"(?i)(?:token|marker|cursor|id|ids|arn|arns|name|names|hash|digest|checksum|etag|sha\d*|md5|fingerprint"
    r"|version|(?<!secret)(?<!access)(?<!api)(?<!private)key)$"
)
MIN_KEY_ENTROPY = 4.0  # bits per character; random 40-character keys have about 4.7


# -- secrets by name
#
# What AWS carries in maps and name/value pairs (environments, job arguments, connection and
# cluster properties) and members the models do not mark have no form the patterns above know: a
# random password is just letters. Their names say what they are. A name is split into words
# (CamelCase, snake_case, kebab-case, dotted, UPPER, a ``--`` argument); it names a secret when it
# ends with a secret word, or with one followed by at most two words that say "its value"
# (``SecretString``, ``PrivateKeyPem``, ``SECRET_KEY_BASE``) and a number. Ending so keeps
# identifiers and metadata out: ``SecretArn``, ``AccessKeyId``, ``PasswordLastUsed``, ``TokenType``,
# ``ApiKeyName``, ``PasswordPolicy``, ``AuthTokenEnabled``, ``TokenEndpoint`` end with other words.
_NAME_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
# secret words, also at the end of a longer lower-case word (``dbpassword``, ``authtoken``), and in
# the plural (``Passwords``)
SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token", "credential", "apikey", "accesskey",
                "privatekey", "secretkey")
# secret words only as words of their own (``bypass``, ``oauth``, ``OLDPWD`` are not)
WHOLE_SECRET_WORDS = frozenset({"pass", "pwd", "auth"})
_JOINED = {("api", "key"): "apikey", ("access", "key"): "accesskey", ("private", "key"): "privatekey",
           ("secret", "key"): "secretkey", ("auth", "key"): "auth"}
# words after a secret word that still name its value
VALUE_WORDS = frozenset({"value", "string", "key", "data", "text", "material", "pem", "base", "b64", "base64",
                         "plaintext"})
# A name with one of these words is about a secret, not one: when it expires, how it rotates, the
# KMS key that encrypts it.
NOT_SECRET_WORD_STARTS = ("expir", "rotation", "kms")
# Tokens that are handles, not credentials: cursors (``NextToken``, ``nextForwardToken``),
# idempotency and concurrency tokens (``ClientToken``, ``ChangeToken``, ``LockToken``,
# ``ProvisionToken``), callbacks and task handles (``TaskToken``, ``LifecycleActionToken``,
# ``RegistrationToken``), counts (``MaxTokens``), DNS values (``DkimTokens``), an instance metadata
# setting (``HttpTokens``). The word before ``token`` says so.
HANDLE_TOKENS = frozenset({
    "next", "page", "pagination", "continuation", "start", "starting", "resume", "marker", "cursor", "sequence",
    "forward", "backward", "chunk", "message", "result", "results", "block", "view", "preview", "list", "query",
    "client", "request", "idempotency", "unique", "creation", "change", "update", "updated", "lock", "version",
    "conditional", "checkpoint", "import", "export", "retrieval", "feedback", "consumption", "share",
    "configuration", "poll", "workflow", "lifecycle", "action", "callback", "task", "offer", "term", "billing",
    "purchase", "product", "hooks", "grant", "verification", "registration", "dkim", "http", "max", "min",
    "total", "input", "output", "sync", "batch", "cancel", "cancellation", "upload", "anomaly", "unit",
    "source", "execute", "provision", "terminate", "profile",
})
# In a {Name, Value} structure the name member names the value member. (name member, value member)
NAME_VALUE_MEMBERS = (("Name", "Value"), ("name", "value"), ("Key", "Value"), ("key", "value"),
                      ("OptionName", "Value"), ("ParameterKey", "ParameterValue"))
# a sibling ``type`` that says the value is where the secret is kept, not the secret (CodeBuild's
# and CodePipeline's environment variables)
REFERENCE_TYPES = frozenset({"PARAMETER_STORE", "SECRETS_MANAGER"})
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# an SSM parameter name or a path (``/prod/db/password``, ``/app``); not a random password that
# happens to start with a slash (``/k3JHq9xLmN2p``)
_PARAMETER_NAME = re.compile(r"/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+/?|/[a-z0-9_.-]*")
# the quick test over a whole body: a secret word, and the run of name characters around it
_NAME_STEMS = ("pass", "pwd", "secret", "token", "credential", "auth")
_NAME_STEM = re.compile(r"(?i)" + "|".join(_NAME_STEMS))
_KEY_HINT = re.compile(r"(?i)(?:api|access|private)(?:[^a-z0-9\\]|\\u[0-9a-f]{4}|\\.)*key")  # JSON escapes between too
_RUN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@functools.lru_cache(maxsize=8192)
def secret_name(name: str) -> bool:
    """Does this name (a member's, a map key, a name member's value) say its value is a secret?"""
    words = [w.lower() for w in _NAME_WORDS.findall(name)]
    if not words or any(w.startswith(NOT_SECRET_WORD_STARTS) for w in words):
        return False
    if "".join(words) in NOT_SECRET_KEYS:
        return False
    while words and words[-1].isdigit():
        words.pop()
    joined: list[str] = []
    for w in words:
        pair = _JOINED.get((joined[-1], w)) if joined else None
        if pair is not None:
            joined[-1] = pair
        else:
            joined.append(w)
    for tail in range(3):  # the secret word, then up to two value words
        if tail >= len(joined) or (tail and joined[-tail] not in VALUE_WORDS):
            return False
        i = len(joined) - 1 - tail
        found = _secret_word(joined[i])
        if found is None:
            continue
        before, secret = found
        if secret == "token":
            return (before or (joined[i - 1] if i else "")) not in HANDLE_TOKENS
        return True
    return False


def _secret_word(word: str) -> tuple[str, str] | None:
    """(what comes before it in ``word``, the secret word) when ``word`` is or ends with one."""
    if word in WHOLE_SECRET_WORDS:
        return "", word
    for stem in (word, word[:-1] if word.endswith("s") and not word.endswith("ss") else ""):
        for secret in SECRET_WORDS if stem else ():
            if stem.endswith(secret):
                return stem[:-len(secret)], secret
    return None


def secret_value(value: str) -> bool:
    """Could this value, under a secret's name, be the secret? Not when it is empty, a boolean, a
    number, an ARN, a reference to where the secret is kept (``{{resolve:secretsmanager:...}}``,
    ``${...}``, an SSM parameter name) or what a service shows instead of it (``****``)."""
    v = value.strip()
    if not v or v.lower() in ("true", "false", "null") or _NUMBER.fullmatch(v):
        return False
    if (v.startswith("arn:") and " " not in v) or _PARAMETER_NAME.fullmatch(v):  # a secret's ARN, a parameter's name
        return False
    if (v.startswith("{{resolve:") and v.endswith("}}")) or (v.startswith("${") and v.endswith("}")):
        return False
    return v.strip("*") != ""


def named(text: str, name: str | None) -> list[Finding]:
    """The whole value, when its name says it is a secret."""
    if name and secret_name(name) and secret_value(text):
        return [Finding(0, len(text), "named-secret")]
    return []


def named_value(members: Mapping) -> tuple[str, str] | None:
    """For a structure that names its value ({Name, Value}, {Key, Value}, {OptionName, Value},
    {ParameterKey, ParameterValue}): (the value member, the name the name member gives it) when
    that name is a secret's; None otherwise."""
    for name_member, value_member in NAME_VALUE_MEMBERS:
        name = members.get(name_member)
        if isinstance(name, str) and value_member in members and secret_name(name):
            kind = members.get("type", members.get("Type"))
            if isinstance(kind, str) and kind in REFERENCE_TYPES:
                return None
            return value_member, name
    return None


def named_attribute(members: Mapping, name: str | None) -> tuple[str, str] | None:
    """For a message attribute's value (SQS's and SNS's ``{DataType, StringValue}``) under a name
    that says it is a secret (its map entry's key, or the ``Name`` beside it): ("StringValue", that
    name); None otherwise."""
    if name and "DataType" in members and isinstance(members.get("StringValue"), str) and secret_name(name):
        return "StringValue", name
    return None


def names_secret(text: str) -> bool:
    """Could a name in this text (a raw body, or the names and values of one) say that a value is
    a secret? A quick over-approximation, so that bodies with no such name are not walked for one.

    A name is delimited by what cannot be in a run of letters, digits and underscores (quotes,
    ``<``, ``.``, ``-``, a line break), so the run around a secret word lies within whatever name
    holds it; when ``secret_name`` refuses the run (``NextToken``, ``AccessKeyId``,
    ``PasswordLastUsed``), it refuses every name that ends as the run does."""
    if "\\u" in text or "&#" in text:  # escapes could hide a name
        return True
    return _names_in(text, text.lower(), None)


def _names_in(text: str, lowered: str, present: set[str] | None) -> bool:
    """``names_secret`` of a text without escapes, given its lower case (and which of ``_STEMS``
    are in it, when that is known)."""
    keys = ("key" in present if present is not None else "key" in lowered) and (
        "api" in lowered or "access" in lowered or "private" in lowered)
    if len(lowered) != len(text):  # a character whose lower case is longer: find the stems in the text itself
        lowered = _NAME_STEM.sub(lambda m: m.group().lower(), text)
    for stem in _NAME_STEMS:
        if present is not None and stem in _STEMS and stem not in present:
            continue
        i = lowered.find(stem)
        while i >= 0:
            found, end = _run_names_secret(text, i, i + len(stem))
            if found:
                return True
            i = lowered.find(stem, end)
    for m in _KEY_HINT.finditer(text) if keys else ():
        if any(c not in _RUN for c in m.group()):  # api-key, api.key: the words of two runs
            return True
        if _run_names_secret(text, m.start(), m.end())[0]:
            return True
    return False


def _run_names_secret(text: str, start: int, end: int) -> tuple[bool, int]:
    """Whether the run of name characters around ``text[start:end]`` names a secret, and where
    that run ends."""
    while start > 0 and text[start - 1] in _RUN:
        start -= 1
    while end < len(text) and text[end] in _RUN:
        end += 1
    if secret_name(text[start:end]):
        return True, end
    # after a JSON escape (\n, \t), the name starts past the escape's letter
    return start > 0 and text[start - 1] == "\\" and secret_name(text[start + 1:end]), end


@dataclasses.dataclass(frozen=True)
class Finding:
    start: int
    end: int
    detector: str


def entropy(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


def looks_like_secret_key(candidate: str) -> bool:
    """A random 40-character access key has upper and lower case letters and digits, few slashes
    and high entropy; paths and hex or base32 digests do not."""
    if candidate.count("/") > 3:
        return False
    upper = lower = digit = False
    for c in candidate:
        if "A" <= c <= "Z":
            upper = True
        elif "a" <= c <= "z":
            lower = True
        elif "0" <= c <= "9":
            digit = True
    return upper and lower and digit and entropy(candidate) >= MIN_KEY_ENTROPY


def suspicious(text: str, json: bool = False) -> bool:
    """Could any detector find something in this text, or in any string of this raw body?

    A quick over-approximation: True whenever ``find`` might find something in it (or in a string
    of it: ``json`` says the text is a raw JSON body, whose member names are not assignments).
    Plain substring searches, and regular expressions only where those found a hint."""
    return _hints(text, json, False)[0]


def hints(text: str, json: bool = False) -> tuple[bool, bool]:
    """For a raw body: (``suspicious``, ``suspicious`` or ``names_secret``), from one look at it
    (one lower-casing, each secret word searched for once)."""
    return _hints(text, json, True)


def _hints(text: str, json: bool, names: bool) -> tuple[bool, bool]:
    if "\\" in text:
        if "\\u" in text:  # escapes could hide what the patterns look for
            return True, True
        text = text.replace("\\/", "/")
    if ("&" in text and "&#" in text) or ("J" in text and "eyJ" in text) or "PRIVATE KEY" in text:
        return True, True
    if _VENDOR_HINT.search(text):
        return True, True
    if "@" in text and "://" in text and URL_PASSWORD_HINT.search(text):
        return True, True
    lowered = text.lower()
    present: set[str] = set()
    if "bearer" in lowered or _assignment_hint(lowered, ASSIGNMENT_AT_JSON if json else ASSIGNMENT_AT, present):
        return True, True
    if ("</" in text and XML_SECRET.search(text)) or ("password" in lowered and NETRC_PASSWORD.search(text)):
        return True, True
    if len(text) >= 40 and _key_run(text.encode("utf-8", "surrogatepass")):
        return True, True
    return False, names and _names_in(text, lowered, present)


def _assignment_hint(lowered: str, pattern: re.Pattern, present: set[str] | None = None) -> bool:
    for stem in _STEMS:
        i = lowered.find(stem)
        if i >= 0 and present is not None:
            present.add(stem)
        while i >= 0:
            if stem != "key":
                if pattern.match(lowered, i):
                    return True
            elif any(pattern.match(lowered, i - k) for k in _KEY_STARTS if i >= k):
                return True
            i = lowered.find(stem, i + len(stem))
    return False


def _key_run(raw: bytes) -> bool:
    """Is there a run of exactly 40 base64 characters (not followed by padding), or a longer one
    that starts like a session token?"""
    runs = raw.translate(_RUNS)
    i = runs.find(b"a" * 40)
    while i >= 0:  # i starts a run: no shorter run holds 40 in a row
        end = runs.find(b" ", i + 40)
        end = len(runs) if end < 0 else end
        if end - i == 40 and raw[end:end + 1] != b"=" or raw.startswith(_SESSION_PREFIXES, i):
            return True
        i = runs.find(b"a" * 40, end)
    return False


def find(text: str, name: str | None = None, by_name: bool = True) -> list[Finding]:
    """What looks like a secret in one string value; ``name`` is the member holding it, if known
    (``by_name``: its name may say it is a secret; not for a value of an enum)."""
    if by_name and name:
        found = named(text, name)
        if found:
            return found
    if len(text) < 8:
        return []
    found: list[Finding] = []
    if "PRIVATE KEY" in text:
        found += [Finding(m.start(), m.end(), "private-key") for m in PRIVATE_KEY.finditer(text)]
    if "eyJ" in text:
        found += [Finding(m.start(), m.end(), "jwt") for m in JWT.finditer(text)]
    if any(p in text for p in SESSION_TOKEN_PREFIXES):
        found += [Finding(m.start(), m.end(), "aws-session-token") for m in SESSION_TOKEN.finditer(text)]
    if "://" in text and "@" in text:
        found += [Finding(m.start("value"), m.end("value"), "url-password") for m in URL_PASSWORD.finditer(text)
                  if not m.group("value").startswith(MARKER_PREFIX)]
    if "earer" in text or "EARER" in text:
        found += [Finding(m.start("value"), m.end("value"), "bearer-token") for m in BEARER.finditer(text)]
    if _VENDOR_HINT.search(text):
        found += [Finding(m.start(), m.end(), "vendor-token") for m in VENDOR_TOKEN.finditer(text)]
    if "</" in text:
        found += [Finding(m.start("value"), m.end("value"), "assignment") for m in XML_SECRET.finditer(text)
                  if not m.group("value").startswith(MARKER_PREFIX)]
    if "password" in text:
        found += [Finding(m.start("value"), m.end("value"), "assignment") for m in NETRC_PASSWORD.finditer(text)
                  if not m.group("value").startswith(MARKER_PREFIX)]
    if ("=" in text or ":" in text) and any(w in text.lower() for w in KEY_WORD_HINTS):
        for m in ASSIGNMENT.finditer(text):
            key = m.group("key").lower().replace("_", "").replace("-", "").rpartition(".")[2]
            if key in NOT_SECRET_KEYS or m.group("value").startswith(MARKER_PREFIX) or INTRINSIC_TAG.fullmatch(
                    m.group("value")):
                continue
            found.append(Finding(m.start("value"), m.end("value"), "assignment"))
    for m in SECRET_KEY.finditer(text) if len(text) >= 40 else ():
        candidate = m.group()
        context = SECRET_KEY_CONTEXT.search(text, max(0, m.start() - 48), m.start())
        if context is not None or (
            (name is None or not NOT_KEY_MEMBER.search(name)) and looks_like_secret_key(candidate)
        ):
            found.append(Finding(m.start(), m.end(), "aws-secret-access-key"))
    return merge(found) if len(found) > 1 else found


def merge(found: list[Finding]) -> list[Finding]:
    """Overlapping findings as one, in order of position; where two start together, the one that
    says more about what the secret is names it (an assignment says least)."""
    out: list[Finding] = []
    for f in sorted(found, key=lambda f: (f.start, -f.end, f.detector == "assignment")):
        if out and f.start < out[-1].end:
            last = out[-1]
            if f.end > last.end:
                out[-1] = Finding(last.start, f.end, last.detector)
            continue
        out.append(f)
    return out
