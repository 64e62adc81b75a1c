"""The ``agentgate`` command line. Every command has --help, and bad input ends in one line on
stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shlex
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

import click

from .settings import Settings, SettingsError, config_path, load_settings

SHIPPED_POLICIES = Path(__file__).resolve().parent.parent / "policies"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _settings(**flags) -> Settings:
    try:
        return load_settings(**flags)
    except SettingsError as e:
        raise click.ClickException(str(e)) from None


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived while a command had something to undo (an export's temporary file,
    commands/export.py): raised where it was, so that it is undone as on Ctrl-C; ``LazyGroup.main``
    then ends the process by that signal, as the signal would have without a handler."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class LazyGroup(click.Group):
    """Subcommands that live in other modules are imported only when used, so that quick
    commands (aws-credentials runs on every SDK credential refresh) start fast."""

    lazy = {
        "policy": "addons.commands.policy:policy",
        "sessions": "addons.commands.store:sessions",
        "calls": "addons.commands.store:calls",
        "verify": "addons.commands.store:verify",
        "prune": "addons.commands.store:prune",
        "approvals": "addons.commands.approvals:approvals",
        "access": "addons.commands.approvals:access",
        "export": "addons.commands.export:export",
        "replay": "addons.commands.export:replay",
        "report": "addons.commands.export:report",
    }

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx, name):
        if name in self.lazy and name not in self.commands:
            import importlib

            module, attr = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, **kwargs)
        except Stopped as e:
            import signal

            signal.signal(e.signum, signal.SIG_DFL)
            os.kill(os.getpid(), e.signum)
            sys.exit(128 + e.signum)  # the signal is blocked: the exit code a shell gives it

    def invoke(self, ctx: click.Context):
        """A command's run, with what the system refuses to do with an argument (a file name too
        long, a path through a file) and an argument that is not text (bytes that are not UTF-8 in
        a UTF-8 locale) told in one line, not a traceback."""
        try:
            return super().invoke(ctx)
        except UnicodeEncodeError as e:
            if "surrogates not allowed" not in str(e):
                raise
            raise click.UsageError("an argument is not valid text (bytes that are not UTF-8): give it as UTF-8 text") \
                from None
        except OSError as e:
            if isinstance(e, BrokenPipeError) or e.errno in (errno.EPIPE, None):
                raise
            raise click.ClickException(f"cannot use {e.filename!r}: {e.strerror or e}" if e.filename is not None
                                       else f"{e.strerror or e}") from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """agentgate: AI agents use AWS through per-call policy, approval, masking and recording."""


# ---------------------------------------------------------------------------------------- init

TOML_TEMPLATE = """\
# agentgate settings. Flags and AGENTGATE_* environment variables override these.
listen = "{listen}"
# db = "sqlite:///agentgate.db"            # or postgresql+psycopg://user@host/db to scale out
policies = "policies"
# upstream = "http://127.0.0.1:5000"     # send all AWS traffic to one endpoint (moto, LocalStack), Host kept
oidc_issuer = "{oidc_issuer}"            # the issuer whose tokens agents present
oidc_audience = "{oidc_audience}"
groups_claim = "groups"
allow_hosts = []                         # non-AWS hosts tunnelled untouched, e.g. ["pypi.org", "*.github.com"]
# allow_private = ["10.0.0.0/16"]        # private/loopback addresses agents may reach (a VPC endpoint's range):
                                         # CIDR, address or host name, each with an optional :PORT
# max_header_bytes = 65536               # a request head (line and headers) larger than this: 431
# max_url_bytes = 16384                  # a longer URL: 414
# max_body_bytes = 104857600             # a body read into memory (no declared payload hash) larger than this: 413
approval_hold = 20
# max_pending_approvals = 100            # approvals one principal may have pending at once; more asks are refused
durability = "sync"                      # "async" trades the commit-before-answer guarantee for latency
sqlite_synchronous = "normal"            # "full": a committed record also survives a power loss (SQLite; slower)
# store_writer = "process"               # the store's writer in a process of its own (more calls/s, ~50 MB more)
# busy_poll_us = 300                     # microseconds the event loop polls before it sleeps while traffic flows (0: never)
console_listen = "127.0.0.1:8081"        # the approvals console ("" for none)
# webhook_url = "https://hooks.slack.com/services/..."   # told of approvals asked and decided
# grant_approvers = ["sre"]              # groups that approve access grants (agentgate access)
"""


def _update_config(cfg: Path, values: dict[str, str]) -> dict[str, object]:
    """Set ``values`` in an existing agentgate.toml, keeping its comments and layout; returns the
    settings that changed, with what they were (None: not set)."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    from .settings import config_text

    try:
        doc = tomlkit.parse(config_text(cfg))
    except SettingsError as e:
        raise click.ClickException(str(e)) from None
    except TOMLKitError as e:
        raise click.ClickException(f"cannot update {cfg}: {e}") from None
    table = doc["agentgate"] if "agentgate" in doc else doc  # the settings may sit under [agentgate]
    changed = {k: table.get(k) for k, v in values.items() if table.get(k) != v}
    for k in changed:
        table[k] = values[k]
    if changed:
        try:
            cfg.write_text(tomlkit.dumps(doc))
        except OSError as e:
            raise click.ClickException(f"cannot update {cfg}: {e.strerror or e}") from None
    return changed


def _write_secret(path: Path, data: bytes) -> bool:
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


CA_KEY = "mitmproxy-ca.pem"  # mitmproxy's CA: its private key and certificate, in one file
CA_CERT_FILES = ("mitmproxy-ca-cert.pem", "mitmproxy-ca-cert.cer")  # the certificate alone, which agents trust


def load_ca(certs: Path) -> object:
    """The CA in ``certs`` as the gateway loads it (mitmproxy's CertStore), checked before anything
    is started; ClickException, one line saying what to do, when its key file is missing or cannot be
    loaded (not PEM, no key, unreadable)."""
    from mitmproxy.certs import CertStore

    key = certs / CA_KEY
    if not key.exists():
        raise click.ClickException(f"no CA at {certs / CA_CERT_FILES[0]}: run `agentgate init` first")
    try:
        return CertStore.from_files(key, certs / "mitmproxy-dhparam.pem")
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM):
            raise click.ClickException(f"the CA key {key} cannot be read: {e.strerror or e}") from None
        raise click.ClickException(f"the CA key {key} cannot be read ({e.strerror}): run agentgate as the user that "
                                   "owns it, or give this user read access to it") from None
    except (ValueError, TypeError, IndexError) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        why = why.split(". See https://")[0]  # cryptography's pointer to its FAQ
        raise click.ClickException(f"the CA key {key} cannot be loaded ({why}): restore it from a backup, or move "
                                   f"{certs} aside and run `agentgate init` for a new CA (agents must then trust its "
                                   "new certificate)") from None


def create_ca(certs: Path) -> tuple[Path, list[Path]]:
    """mitmproxy's CA in ``certs`` (key files 0600; the certificate alone, which agents must trust
    and which is public, 0644 in the 0700 directory: a copy of it keeps that mode): made when there
    is none, else loaded, and the certificate files agents trust written again from the key when
    they are missing. Returns the certificate agents must trust, and the files written again."""
    from mitmproxy.certs import CertStore

    certs.mkdir(parents=True, exist_ok=True)
    os.chmod(certs, 0o700)
    if not (certs / CA_KEY).exists():
        CertStore.create_store(certs, "mitmproxy", 2048)
    store = load_ca(certs)
    remade = []
    for name in CA_CERT_FILES:
        if not (certs / name).exists():
            (certs / name).write_bytes(store.default_ca.to_pem())
            remade.append(certs / name)
    for p in certs.iterdir():
        if p.suffix in (".pem", ".p12", ".cer"):
            os.chmod(p, 0o644 if "-cert" in p.name else 0o600)
    return certs / CA_CERT_FILES[0], remade


@main.command()
@click.option("--oidc-issuer", default=None, help="The OIDC issuer whose tokens agents present.")
@click.option("--oidc-audience", default=None, help="The audience agents' tokens carry.")
@click.option("--listen", default=None, help="HOST:PORT the gateway listens on.")
def init(oidc_issuer, oidc_audience, listen) -> None:
    """Create the CA (certs/), agentgate.toml, the default policies, keys and the store."""
    previous = os.umask(0o077)  # what init writes (config, CA, keys, the SQLite store) is its user's alone
    click.get_current_context().call_on_close(lambda: os.umask(previous))
    cfg = config_path()
    try:
        cfg.parent.mkdir(parents=True, exist_ok=True)  # AGENTGATE_HOME, made on first use
    except OSError as e:
        raise click.ClickException(f"cannot create {cfg.parent}: {e.strerror or e}") from None
    given = {k: v for k, v in (("listen", listen), ("oidc_issuer", oidc_issuer), ("oidc_audience", oidc_audience))
             if v is not None}
    try:  # what is given must be valid before it is written
        load_settings(new_config=True, **given)
    except SettingsError as e:
        raise click.ClickException(str(e)) from None
    if not cfg.exists():
        cfg.write_text(TOML_TEMPLATE.format(
            listen=listen or "127.0.0.1:8080",
            oidc_issuer=oidc_issuer or os.environ.get("AGENTGATE_OIDC_ISSUER", ""),
            oidc_audience=oidc_audience or "agentgate",
        ))
        click.echo(f"wrote {cfg}")
    elif given:
        for name, was in _update_config(cfg, given).items():
            click.echo(f"{cfg}: {name} set to {given[name]!r} (was {'not set' if was is None else repr(str(was))})")
    s = _settings()
    ca, remade = create_ca(Path(s.certs))
    for path in remade:
        click.echo(f"{path} was missing: written again from the CA key {Path(s.certs) / CA_KEY}")
    click.echo(f"CA ready: {ca} (key files 0600)")
    policies = Path(s.policies)
    if not policies.exists() and SHIPPED_POLICIES.is_dir() and policies.resolve() != SHIPPED_POLICIES:
        shutil.copytree(SHIPPED_POLICIES, policies)
        click.echo(f"default policies copied to {policies}")
    elif policies.exists() and not policies.is_dir():
        raise click.ClickException(f"policies names {policies}, which is not a directory: the policy files go in a "
                                   "directory; move that file aside (and run `agentgate init` again for the default "
                                   "policies), or set policies to the directory of yours")
    keys = Path(s.keys)
    for name, data in (
        ("chain.key", secrets.token_hex(32).encode()),
        ("fingerprint.key", secrets.token_hex(32).encode()),
        ("admin.token", secrets.token_urlsafe(32).encode()),
    ):
        if _write_secret(keys / name, data):
            click.echo(f"created {keys / name} (0600)")
        os.chmod(keys / name, 0o600)  # one that was already there too
    os.chmod(keys, 0o700)
    from .core.store import Store, StoreError, chain_key_path, load_chain_key

    try:  # with the chain key: an upgrade anchors older records with a keyed checkpoint
        Store(s.db, chain_key=load_chain_key(chain_key_path(s.keys))).migrate()
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"store ready: {s.db}")


# ----------------------------------------------------------------------------------------- run

@main.command()
@click.option("--listen", default=None, help="HOST:PORT to listen on (default 127.0.0.1:8080).")
@click.option("--db", default=None, help="SQLAlchemy URL of the store.")
@click.option("--policies", default=None, help="Directory of policy files.")
@click.option("--upstream", default=None, help="Send all AWS traffic to this URL, keeping the original Host.")
@click.option("--web", is_flag=True, default=None, help="Run the chain inside mitmweb for live inspection.")
@click.option("--web-listen", default="127.0.0.1:8082", show_default=True, help="HOST:PORT of mitmweb's UI (with --web).")
@click.option("--workers", type=int, default=None,
              help="Gateway processes sharing the port (default 1; PostgreSQL store for more than a few).")
@click.option("-v", "--verbose", is_flag=True, help="Log every call.")
def run(listen, db, policies, upstream, web, web_listen, workers, verbose) -> None:
    """Start the gateway."""
    s = _settings(listen=listen, db=db, policies=policies, upstream=upstream, web=web, workers=workers)
    if s.workers > 1 and s.web:
        raise click.UsageError("--web runs one process (mitmweb's view of the flows is per process): use workers = 1")
    load_ca(Path(s.certs))  # before any store is made or port bound: a CA the gateway could not load stops it here
    if not Path(s.ca_file).exists():
        raise click.ClickException(f"the CA certificate {s.ca_file}, which agents trust, is missing: run `agentgate "
                                   "init` to write it again from the CA key")
    if s.web:
        from .settings import parse_hostport

        try:
            parse_hostport(web_listen, "--web-listen")
        except SettingsError as e:
            raise click.BadParameter(str(e), param_hint="--web-listen") from None
    if s.workers > 1:
        from .workers import supervise

        sys.exit(supervise(s, verbose=verbose, web_listen=web_listen))
    from .workers import unbindable

    if (problem := unbindable(s, web_listen if s.web else None)) is not None:
        raise click.ClickException(problem)
    from .gateway import run as run_gateway

    sys.exit(run_gateway(s, verbose=verbose, web_listen=web_listen))


# ----------------------------------------------------------------------------------------- env

def _agent_token(token_file: str | None, token_env: str | None = None) -> tuple[str, dict, datetime | None]:
    """The agent's token from ``token_file`` (or the variable ``token_env``), its claims (read, not
    verified) and the time its exp claim names; one line and exit 1 when it is no JWT (core.tokenfile)."""
    from .core.tokenfile import TokenFileError, expiry, jwt_claims, read_token_file

    try:
        if token_file:
            token, where = read_token_file(token_file), f"the token file {token_file}"
        else:
            token, where = os.environ.get(token_env or "", "").strip(), f"the environment variable {token_env}"
            if not token:
                raise TokenFileError(f"the environment variable {token_env} is empty")
        claims = jwt_claims(token, where)
        return token, claims, expiry(claims, token_file or token_env or "")
    except TokenFileError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.option("--token-file", default=None, help="File holding the agent's OIDC token (refreshed by its platform).")
@click.option("--gateway", default=None, help="HOST:PORT agents use to reach the gateway (default: listen).")
@click.option("--region", default="us-east-1", show_default=True, help="AWS region for the profile.")
@click.option("--config-file", default=None, help="Where the eval'd output writes the AWS config (default ~/.aws/agentgate-config).")
@click.option("--proxy-token/--no-proxy-token", default=True, show_default=True,
              help="Put the token in HTTPS_PROXY (transport A). Without it the agent's SDK presents the token it "
                   "re-reads from the file on every call (transport B alone): for tokens that are refreshed.")
def env(token_file, gateway, region, config_file, proxy_token) -> None:
    """Print the shell lines an agent container needs: eval "$(agentgate env --token-file F)".

    Transport A puts the token in HTTPS_PROXY; transport B is an AWS profile whose
    credential_process hands the token to the SDK as its session token, re-read from the file.
    """
    s = _settings()
    gw = gateway or s.listen
    host, _, port = gw.rpartition(":")
    if not (port.isdigit() and 0 < int(port) < 65536 and re.fullmatch(r"[A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\]", host)):
        raise click.BadParameter(f"must be HOST:PORT (a host name or address, no scheme), not {gw!r}",
                                 param_hint="--gateway" if gateway else "listen")
    if not re.fullmatch(r"[a-z0-9-]{1,40}", region):  # it goes into the AWS config file the output writes
        raise click.BadParameter(f"must be an AWS region name such as us-east-1, not {region!r}", param_hint="--region")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    ca = str(Path(s.ca_file))
    if not Path(ca).is_file():
        raise click.ClickException(f"no CA at {ca}: run `agentgate init` first, or run this where the gateway's "
                                   "agentgate.toml is (or with AGENTGATE_HOME set to that directory)")
    exe = shutil.which("agentgate") or str(Path(sys.argv[0]).resolve())
    lines = ["# agentgate: the environment of an agent that calls AWS through the gateway"]
    # absolute, links kept: Kubernetes' projected token is token -> ..data/token, ..data a link to a
    # directory it replaces (and deletes the old one) at each refresh; the link is what stays
    token_path = os.path.abspath(token_file) if token_file else None
    if token_path is not None and _CONTROL.search(token_path):  # it goes into the AWS config file, a line of it
        raise click.BadParameter(f"{token_path!r} holds a line break or control character: give the token file a "
                                 "name without one", param_hint="--token-file")
    if token_file:
        token, _, exp = _agent_token(token_file)
        if exp is not None and exp.timestamp() <= time.time():
            click.echo(f"warning: the token in {token_file} expired at {exp.strftime('%Y-%m-%d %H:%M:%S UTC')}"
                       + (": the gateway will refuse HTTPS_PROXY's copy of it (transport A); with "
                          "--no-proxy-token the SDK presents the token it re-reads from the file" if proxy_token
                          else ""), err=True)
    if not proxy_token:
        lines.append("# no token in the proxy URL: each request carries the SDK's session token (transport B)")
        lines.append(f"export HTTPS_PROXY={shlex.quote(f'http://{host}:{port}')}")
    elif token_file:
        lines.append("# transport A: the agent's token is the password of the proxy URL, as the file holds it now;")
        lines.append("# after the token is refreshed, eval this again (or use --no-proxy-token)")
        lines.append(f"export HTTPS_PROXY={shlex.quote(f'http://agent:{token}@{host}:{port}')}")
    else:
        lines.append("# transport A: the agent's token (set AGENTGATE_TOKEN) is the password of the proxy URL")
        lines.append(f'export HTTPS_PROXY="http://agent:${{AGENTGATE_TOKEN}}@{host}:{port}"')
    lines.append('export https_proxy="$HTTPS_PROXY"')
    lines.append("# trust the gateway's CA")
    for var in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        lines.append(f"export {var}={shlex.quote(ca)}")
    cfg = shlex.quote(config_file) if config_file else '"$HOME/.aws/agentgate-config"'  # $HOME: the agent's
    process = (f"{shlex.quote(exe)} aws-credentials --token-file {shlex.quote(token_path)}" if token_path
               else f"{shlex.quote(exe)} aws-credentials --token-env AGENTGATE_TOKEN")  # the SDKs split it as a shell would
    lines.append("# transport B: an AWS profile whose credential_process presents the token as the session token")
    lines.append(f"export AWS_CONFIG_FILE={cfg}")
    lines.append("export AWS_PROFILE=agentgate")
    lines.append("unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_SHARED_CREDENTIALS_FILE")
    lines.append('mkdir -p "$(dirname "$AWS_CONFIG_FILE")"')
    lines.append("cat > \"$AWS_CONFIG_FILE\" <<'AGENTGATE_AWS_CONFIG'")
    lines.append("[profile agentgate]")
    lines.append(f"region = {region}")
    lines.append(f"credential_process = {process}")
    lines.append("AGENTGATE_AWS_CONFIG")
    click.echo("\n".join(lines))


@main.command("aws-credentials")
@click.option("--token-file", default=None, help="File holding the agent's OIDC token.")
@click.option("--token-env", default=None, help="Environment variable holding the token instead.")
def aws_credentials(token_file, token_env) -> None:
    """An AWS credential_process: prints the agent's token as the session token (transport B)."""
    if token_file and token_env:
        raise click.UsageError("give --token-file F or --token-env NAME, not both")
    if not (token_file or token_env):
        raise click.UsageError("give --token-file F (or --token-env NAME)")
    token, _, exp = _agent_token(token_file, token_env)
    if exp is None:
        raise click.ClickException(f"the token in {token_file or token_env} has no exp claim: the SDK needs to know "
                                   "when it expires")
    if exp.timestamp() <= time.time():
        raise click.ClickException(f"the token in {token_file or token_env} expired at {exp.isoformat()}; its "
                                   "platform should refresh it")
    click.echo(json.dumps({
        "Version": 1,
        "AccessKeyId": "agentgate",
        "SecretAccessKey": "agentgate-not-a-secret",
        "SessionToken": token,
        "Expiration": exp.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }))
