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
============================  ==================================================================

``suspicious(text)`` is the quick test over a whole raw body: False means no detector can find
anything in any string of it, so the body need not be parsed for detection.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter

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
ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?P<key>[A-Za-z0-9_.-]{0,40}?(?:" + KEY_WORDS + r"))"
    r"(?:\\?[\"'])?\s*(?:=|:(?=\s|\\?[\"']))\s*(?:\\?[\"'])?"
    r"(?P<value>[^\s\"'\\&;,<>{}()\[\]$%][^\s\"'\\&;,<>{}()\[\]]*)"
)
KEY_WORD_HINTS = ("pass", "pwd", "secret", "token", "key", "signature")
# The quick test: a key word right before = or :. In raw JSON a member name is followed by a bare
# quote, so there it does not count; an escaped quote, inside a string, does.
_KEY_WORDS_AT = r"(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|signature)"
ASSIGNMENT_AT = re.compile(_KEY_WORDS_AT + r"""(?:\\?["'])?\s*(?:=|:(?=\s|\\?["']))""")
ASSIGNMENT_AT_JSON = re.compile(_KEY_WORDS_AT + r"""(?:\\["']|')?\s*(?:=|:(?=\s|\\?["']))""")
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
    if "\\" in text:
        if "\\u" in text:  # escapes could hide what the patterns look for
            return True
        text = text.replace("\\/", "/")
    if ("&" in text and "&#" in text) or ("J" in text and "eyJ" in text) or "PRIVATE KEY" in text:
        return True
    if _VENDOR_HINT.search(text):
        return True
    if "@" in text and "://" in text and URL_PASSWORD_HINT.search(text):
        return True
    lowered = text.lower()
    if "bearer" in lowered or _assignment_hint(lowered, ASSIGNMENT_AT_JSON if json else ASSIGNMENT_AT):
        return True
    if ("</" in text and XML_SECRET.search(text)) or ("password" in lowered and NETRC_PASSWORD.search(text)):
        return True
    return len(text) >= 40 and _key_run(text.encode("utf-8", "surrogatepass"))


def _assignment_hint(lowered: str, pattern: re.Pattern) -> bool:
    for stem in _STEMS:
        i = lowered.find(stem)
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


def find(text: str, name: str | None = None) -> list[Finding]:
    """What looks like a secret in one string value; ``name`` is the member holding it, if known."""
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
            if key in NOT_SECRET_KEYS or m.group("value").startswith(MARKER_PREFIX):
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
