"""Settings: flags, then AGENTGATE_* environment variables, then agentgate.toml, then defaults.

The same names everywhere (DESIGN.md, "Command line"). ``load_settings(**flags)`` returns a
Settings; a flag given as None means "not given on the command line".
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any


class SettingsError(Exception):
    """A setting has a value that cannot be used; the message names it."""


def home() -> Path:
    """Where agentgate keeps its files: AGENTGATE_HOME, else the current directory."""
    return Path(os.environ.get("AGENTGATE_HOME") or os.getcwd()).resolve()


MAX_BUSY_POLL_US = 100_000  # a tenth of a second: past that, polling only burns a CPU
REGION_SHAPE = r"[a-z]{2,}(-[a-z0-9]+)*-[a-z]+-\d+"  # us-east-1, us-gov-west-1, eu-isoe-west-1
_REGION = re.compile(REGION_SHAPE)
MAX_WORKERS = 64  # gateway processes (~130 MB each); past a few per CPU, more only take memory
MIN_HEARTBEAT_TIMEOUT = 2.0  # seconds: twice a worker's heartbeat (one a second), so one late beat is not a hang


@dataclasses.dataclass
class Settings:
    listen: str = "127.0.0.1:8080"
    db: str = ""  # SQLAlchemy URL; default sqlite:///<home>/agentgate.db
    policies: str = ""  # default <home>/policies
    upstream: str = ""  # e.g. http://127.0.0.1:5000: all AWS traffic goes there, Host kept
    upstream_timeout: float = 120.0  # seconds upstream has to answer once the request is sent; 0: no bound
    oidc_issuer: str = ""
    oidc_audience: str = "agentgate"
    oidc_algorithms: list[str] = dataclasses.field(default_factory=lambda: ["RS256", "ES256"])
    groups_claim: str = "groups"
    oidc_leeway: float = 30.0  # seconds of clock skew allowed on exp, nbf and iat
    oidc_jwks_cache: float = 3600.0  # seconds the issuer's keys are trusted before they must be fetched again
    allow_hosts: list[str] = dataclasses.field(default_factory=list)  # non-AWS hosts tunnelled untouched
    allow_private: list[str] = dataclasses.field(default_factory=list)  # off-limits addresses allowed: CIDR, address or host name, [:PORT]
    max_header_bytes: int = 64 * 1024  # a request head (request line and headers) larger than this is refused (431)
    max_url_bytes: int = 16 * 1024  # a request URL longer than this is refused (414)
    max_body_bytes: int = 100 * 1024 * 1024  # a request body read into memory (not streamed) larger is refused (413); a buffered response, answered 502
    approval_hold: float = 20.0
    max_pending_approvals: int = 100  # approvals one principal may have pending at once; more calls needing one are refused
    durability: str = "sync"  # sync | async
    sqlite_synchronous: str = "normal"  # normal | full: what a committed record survives (core/store.py)
    commit_timeout: float = 10.0  # seconds a call waits for its record's commit before it is refused
    drain_seconds: float = 30.0  # on SIGTERM: seconds the calls in flight get to finish before they are cut off
    store_writer: str = "thread"  # thread | process: where the store's writer runs (core/store_process.py)
    fail_open: bool = False
    console_listen: str = "127.0.0.1:8081"  # the approvals console; "" for none
    console_url: str = ""  # the console's address as approvers reach it; default http://<console_listen>
    webhook_url: str = ""  # Slack-compatible incoming webhook told of approvals asked and decided
    grant_approvers: list[str] = dataclasses.field(default_factory=lambda: ["sre"])  # groups that approve access grants
    grant_max: float = 43200.0  # seconds: the longest access grant that can be asked for
    certs: str = ""  # default <home>/certs
    keys: str = ""  # default <home>/keys (fingerprint key, admin token)
    credential_refresh_margin: float = 300.0  # seconds before expiry that JIT credentials are renewed
    sts_region: str = ""  # region whose STS issues JIT credentials; default: the SDK environment's region if in
    # the role's partition, else the partition's default (us-east-1, us-gov-west-1, cn-northwest-1)
    body_cap: int = 1 << 20  # bytes of a body kept in a record
    workers: int = 1  # gateway processes sharing the listening port (SO_REUSEPORT)
    heartbeat_timeout: float = 15.0  # seconds a worker's event loop may go silent before it is killed and replaced; 0: never
    busy_poll_us: int = 300  # microseconds the event loop polls for work before it sleeps; 0: sleeps at once
    web: bool = False
    config_file: str = ""

    def resolved(self) -> "Settings":
        root = Path(self.config_file).parent if self.config_file else home()
        s = dataclasses.replace(self)
        s.db = s.db or f"sqlite:///{root / 'agentgate.db'}"
        s.policies = str(_abs(s.policies or "policies", root))
        s.certs = str(_abs(s.certs or "certs", root))
        s.keys = str(_abs(s.keys or "keys", root))
        if not (math.isfinite(s.upstream_timeout) and s.upstream_timeout >= 0):
            raise SettingsError(f"upstream_timeout must be a number of seconds (0 for no bound), not {number(s.upstream_timeout)}")
        if not (math.isfinite(s.oidc_jwks_cache) and s.oidc_jwks_cache > 0):
            raise SettingsError(f"oidc_jwks_cache must be a number of seconds above 0, not {number(s.oidc_jwks_cache)}")
        if s.durability not in ("sync", "async"):
            raise SettingsError(f"durability must be 'sync' or 'async', not {s.durability!r}")
        if s.sqlite_synchronous not in ("normal", "full"):
            raise SettingsError(f"sqlite_synchronous must be 'normal' or 'full', not {s.sqlite_synchronous!r}")
        if not (math.isfinite(s.credential_refresh_margin) and s.credential_refresh_margin >= 0):
            raise SettingsError(f"credential_refresh_margin must be a number of seconds, 0 or more, not "
                                f"{number(s.credential_refresh_margin)}")
        if s.sts_region and not _REGION.fullmatch(s.sts_region):
            raise SettingsError(f"sts_region must be an AWS region such as us-east-1 or us-gov-west-1, not {s.sts_region!r}")
        if not 0 <= s.drain_seconds <= 3600:
            raise SettingsError(f"drain_seconds must be a number of seconds from 0 to 3600, not {number(s.drain_seconds)}")
        if not (math.isfinite(s.commit_timeout) and s.commit_timeout > 0):
            raise SettingsError(f"commit_timeout must be a number of seconds above 0, not {number(s.commit_timeout)}")
        if s.store_writer not in ("process", "thread"):
            raise SettingsError(f"store_writer must be 'process' or 'thread', not {s.store_writer!r}")
        if s.upstream:
            endpoint_url(s.upstream, "upstream")
        if s.oidc_issuer and not s.oidc_issuer.startswith(("https://", "http://")):
            raise SettingsError(f"oidc_issuer must be the issuer's URL (https://…, as its tokens' iss claim reads), "
                                f"not {s.oidc_issuer!r}")
        if not 0 <= s.approval_hold <= 3600:
            raise SettingsError(f"approval_hold must be a number of seconds from 0 to 3600, not {number(s.approval_hold)}")
        if not 0 <= s.oidc_leeway <= 3600:
            raise SettingsError(f"oidc_leeway must be a number of seconds from 0 to 3600, not {number(s.oidc_leeway)}")
        if not (math.isfinite(s.grant_max) and s.grant_max > 0):
            raise SettingsError(f"grant_max must be a number of seconds above 0, not {number(s.grant_max)}")
        if not all(s.audiences):
            raise SettingsError(f"oidc_audience must name the audience tokens carry (several: comma-separated), not "
                                f"{s.oidc_audience!r}")
        if not s.groups_claim.strip():
            raise SettingsError("groups_claim must name the token's claim that holds its groups (e.g. groups), not ''")
        if s.oidc_algorithms != ["RS256", "ES256"]:
            from .core.identity import KEY_TYPES

            unsupported = [a for a in s.oidc_algorithms if a not in KEY_TYPES]
            if unsupported or not s.oidc_algorithms:
                raise SettingsError(f"oidc_algorithms must be asymmetric algorithms from {sorted(KEY_TYPES)}, the only "
                                    f"ones agentgate verifies (not RSASSA-PSS, PS256 to PS512, nor EdDSA), not "
                                    f"{unsupported or s.oidc_algorithms!r}")
        if not s.max_pending_approvals >= 1:
            raise SettingsError(f"max_pending_approvals must be 1 or more, not {number(s.max_pending_approvals)}")
        parse_hostport(s.listen, "listen")
        if not 0 <= s.busy_poll_us <= MAX_BUSY_POLL_US:
            raise SettingsError(f"busy_poll_us must be a number of microseconds from 0 to {MAX_BUSY_POLL_US}, "
                                f"not {number(s.busy_poll_us)}")
        if not 1 <= s.workers <= MAX_WORKERS:
            raise SettingsError(f"workers must be between 1 and {MAX_WORKERS}, not {number(s.workers)} (each is a gateway "
                                f"process of its own; this machine has {os.cpu_count()} CPUs)")
        if not (s.heartbeat_timeout == 0 or MIN_HEARTBEAT_TIMEOUT <= s.heartbeat_timeout <= 3600):
            raise SettingsError(f"heartbeat_timeout must be a number of seconds from {number(MIN_HEARTBEAT_TIMEOUT)} to 3600 "
                                f"(0: workers are not watched), not {number(s.heartbeat_timeout)}")
        if s.console_listen:
            host, port = parse_hostport(s.console_listen, "console_listen")
            s.console_url = s.console_url or f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        if s.console_url and not _http_url(s.console_url):
            raise SettingsError(f"console_url must be an http:// or https:// URL with a host, not {s.console_url!r}")
        for cap in ("max_header_bytes", "max_url_bytes", "max_body_bytes"):
            if getattr(s, cap) <= 0:
                raise SettingsError(f"{cap} must be a positive number of bytes, not {number(getattr(s, cap))}")
        from .core.destinations import parse_allowed

        try:
            parse_allowed(s.allow_private)
        except ValueError as e:
            raise SettingsError(str(e)) from None
        if s.webhook_url and not _http_url(s.webhook_url):
            raise SettingsError(f"webhook_url must be an http:// or https:// URL with a host, not {s.webhook_url!r}")
        for entry in s.allow_hosts:
            allow_host(entry)
        return s

    @property
    def ca_file(self) -> Path:
        return Path(self.certs) / "mitmproxy-ca-cert.pem"

    @property
    def audiences(self) -> tuple[str, ...]:
        """The audiences oidc_audience names, each without the spaces around it
        (``"api://agentgate, agentgate"`` names ``agentgate``, not `` agentgate``)."""
        return tuple(a.strip() for a in self.oidc_audience.split(","))


def _abs(p: str, root: Path) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (root / path)


def _http_url(value: str) -> bool:
    """An http:// or https:// URL that names a host (and a valid port, if any), with no white space
    or control character in it."""
    from urllib.parse import urlsplit

    if _UNSAFE.search(value):
        return False
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:  # a port that is no number or out of range, a [ without its ]
        return False
    return url.scheme in ("http", "https") and bool(url.hostname) and port != 0


_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # white space and control characters: no URL or host name holds them


def endpoint_url(value: str, name: str) -> str:
    """``value`` when it is an endpoint's URL (``upstream``, ``replay --to``): http:// or https://, a
    host, a port from 1 to 65535 if any, and nothing after them (no path, query or fragment: the
    calls keep their own); SettingsError naming ``name`` otherwise."""
    from urllib.parse import urlsplit

    if not _http_url(value):
        raise SettingsError(f"{name} must be an http:// or https:// URL with a host (and a port from 1 to 65535, if "
                            f"any), not {value!r}")
    url = urlsplit(value)
    if url.path not in ("", "/") or url.query or url.fragment or value.endswith(("?", "#")):
        raise SettingsError(f"{name} must be an endpoint's URL, scheme, host and port only (each call keeps its own "
                            f"path and query), not {value!r}: give {url.scheme}://{url.netloc}")
    return value


# an allow_hosts entry: a host name or address, * and ? as wildcards, and an optional :PORT
_ALLOW_HOST = re.compile(r"(?P<host>[A-Za-z0-9*?_-]+(?:\.[A-Za-z0-9*?_-]+)*\.?)(?::(?P<port>\d{1,5}))?")


def allow_host(entry: str) -> str:
    """``entry`` when it is an ``allow_hosts`` entry (``pypi.org``, ``*.github.com``, ``host:443``);
    SettingsError saying what is wrong with it otherwise."""
    m = _ALLOW_HOST.fullmatch(entry)
    if m is None:
        why = ("an empty entry" if not entry.strip() else "a URL: give its host alone" if "://" in entry or "/" in entry
               else "not a host name, with * and ? as wildcards, and an optional :PORT")
    elif not re.search(r"[A-Za-z0-9]", m["host"]):
        why = "it would tunnel every host untouched: name the hosts (*.example.com)"
    elif m["port"] is not None and not 0 < int(m["port"]) < 65536:
        why = f"port {m['port']} is out of range"
    else:
        return entry
    raise SettingsError(f"allow_hosts entry {entry!r}: {why}")


def parse_hostport(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not (0 < int(port) < 65536):
        raise SettingsError(f"{name} must be HOST:PORT, not {value!r}")
    if "[" in host or "]" in host:  # an IPv6 address, whole within its brackets
        import ipaddress

        inside = host[1:-1] if host.startswith("[") and host.endswith("]") else None
        try:
            ipaddress.IPv6Address(inside if inside is not None else "")
        except ValueError:
            raise SettingsError(f"{name} must be HOST:PORT, an IPv6 address within [ and ] ([::1]:8080), not "
                                f"{value!r}") from None
        return inside, int(port)
    if _UNSAFE.search(host):
        raise SettingsError(f"{name} must be HOST:PORT, a host name or address without spaces, not {value!r}")
    return host or "127.0.0.1", int(port)


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def number(value: float) -> str:
    """A number setting as its user writes it, for messages: 5000 (given as 5000, held as 5000.0),
    0.5, 1000000 (not 1e+06)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


_KINDS = {bool: "true or false", int: "a whole number", float: "a number"}


def _coerce(name: str, value: Any, source: str = "") -> Any:
    """``value`` as setting ``name`` holds it; ``source`` says where it was given, for the error."""
    default = FIELDS[name].default
    kind = type(default) if default is not dataclasses.MISSING else list
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        if kind in (int, float):
            if isinstance(value, bool):  # true is no number (TOML's, or Python's 1)
                raise ValueError(value)
            if kind is int and isinstance(value, float) and not value.is_integer():  # 1.9, inf, nan: not cut to 1
                raise ValueError(value)
            return kind(value)
        return str(value)
    except (TypeError, ValueError, OverflowError):
        where = f" (from {source})" if source else ""
        want = f": it takes {_KINDS[kind]}" if kind in _KINDS else ""
        shown = str(value).lower() if isinstance(value, bool) else repr(value)  # as TOML writes it: true
        raise SettingsError(f"setting {name} has an unusable value {shown}{where}{want}") from None


def config_path() -> Path:
    return Path(os.environ.get("AGENTGATE_CONFIG") or home() / "agentgate.toml")


# AGENTGATE_* variables that are not settings: where agentgate keeps its files and its config file,
# an approver's or agent's token, what the scripts bootstrap with
OTHER_VARIABLES = frozenset({"AGENTGATE_HOME", "AGENTGATE_CONFIG", "AGENTGATE_TOKEN", "AGENTGATE_TOKEN_FILE",
                             "AGENTGATE_PYTHON", "AGENTGATE_DEMO_PYTHON", "AGENTGATE_ROOT"})
OTHER_PREFIXES = ("AGENTGATE_TEST_", "AGENTGATE_BENCH_")  # scripts/test's and scripts/bench's own
_warned = False


def misspelled_variables(environ: Any = None) -> list[str]:
    """One line for each AGENTGATE_* variable that is no setting but reads like one (an
    AGENTGATE_APROVAL_HOLD, which would be ignored where a misspelled agentgate.toml key is an
    error): the variable and the setting it is probably meant for. Variables far from every
    setting's name are left alone (other tools' and scripts' own)."""
    names = {f"AGENTGATE_{n.upper()}" for n in FIELDS if n != "config_file"}
    lines = []
    for var in sorted(v for v in (os.environ if environ is None else environ) if v.startswith("AGENTGATE_")):
        if var in names or var in OTHER_VARIABLES or var.startswith(OTHER_PREFIXES):
            continue
        close = difflib.get_close_matches(var, sorted(names | OTHER_VARIABLES), n=1, cutoff=0.85)
        if close:
            lines.append(f"{var} is not a setting and is ignored: did you mean {close[0]}?")
    return lines


def read_config(path: Path) -> dict[str, Any]:
    """The settings an agentgate.toml holds (at its top level, or in an [agentgate] table), as TOML
    gives them; SettingsError, one line naming the file, when it cannot be read, is not UTF-8 text,
    is not TOML, or holds no table of settings."""
    try:
        data = tomllib.loads(config_text(path))
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{path}: {e}") from None
    section = data.get("agentgate", data)
    if not isinstance(section, dict):
        raise SettingsError(f"{path}: agentgate must be a table of settings ([agentgate]), not {section!r}; or write "
                            "the settings at the file's top level")
    return section


def config_text(path: Path) -> str:
    """The text of the config file ``path``; SettingsError naming it when it cannot be read or is not
    UTF-8 text (as TOML is)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe would hang every command that reads it
            raise SettingsError(f"the config file {path} is not a regular file: point AGENTGATE_CONFIG (or "
                                "AGENTGATE_HOME) at the gateway's agentgate.toml")
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise SettingsError(f"cannot read the config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SettingsError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): a TOML "
                            "file is UTF-8; save it so") from None


# settings that name a file or directory: given as a flag or an AGENTGATE_* variable, a relative one
# is relative to the current directory, as any path typed on a command line; in agentgate.toml, to
# the file's directory (Settings.resolved)
PATH_SETTINGS = ("policies", "certs", "keys")


def _typed_path(name: str, value: Any) -> Any:
    """A path setting given on the command line or in the environment, made absolute against the
    current directory (a relative ``sqlite:///`` store too); other settings as they are."""
    if not isinstance(value, str) or not value:
        return value
    if name in PATH_SETTINGS:
        return str(_abs(value, Path.cwd()))
    if name == "db":
        return _sqlite_against(value, Path.cwd())
    return value


def _sqlite_against(url: str, root: Path) -> str:
    """A ``sqlite:///relative/path`` URL made absolute against ``root``; any other URL as it is."""
    head = "sqlite:///"
    rest = url[len(head):] if url.startswith(head) else None
    if not rest or rest.startswith(("/", ":memory:", "file:")):
        return url
    return head + str(_abs(rest, root))


def load_settings(config: str | None = None, new_config: bool = False, **flags: Any) -> Settings:
    """Merge defaults < agentgate.toml < AGENTGATE_* environment < flags (None = not given).
    ``new_config``: the config file may be missing although AGENTGATE_CONFIG names it (init makes it)."""
    values: dict[str, Any] = {}
    path = Path(config) if config else config_path()
    if path.exists():
        for k, v in read_config(path).items():
            if k not in FIELDS:
                raise SettingsError(f"{path}: unknown setting {k!r}")
            values[k] = _coerce(k, v, str(path))
        values["config_file"] = str(path.resolve())
        if isinstance(values.get("db"), str):
            values["db"] = _sqlite_against(values["db"], path.resolve().parent)
    elif not config and os.environ.get("AGENTGATE_CONFIG") and not new_config:
        raise SettingsError(f"AGENTGATE_CONFIG names {path}, which does not exist: point it at the gateway's "
                            "agentgate.toml, or unset it to use the one in AGENTGATE_HOME (or the current directory)")
    global _warned
    if not _warned:  # once per process, however many times settings are read
        _warned = True
        for line in misspelled_variables():
            print(f"agentgate: warning: {line}", file=sys.stderr)
    for name in FIELDS:
        env = os.environ.get(f"AGENTGATE_{name.upper()}")
        if env is not None and name != "config_file":
            values[name] = _typed_path(name, _coerce(name, env, f"AGENTGATE_{name.upper()}"))
    for k, v in flags.items():
        if v is not None:
            if k not in FIELDS:
                raise SettingsError(f"unknown setting {k!r}")
            values[k] = _typed_path(k, _coerce(k, v, "the command line"))
    return Settings(**values).resolved()
