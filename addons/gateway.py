"""The gateway process: a mitmproxy Master that loads only the add-ons it needs, then the chain.

Stock ``DumpMaster`` loads ~36 add-ons and walks every one of them on every hook; this master
loads mitmproxy's core (options, proxy server, layer selection, TLS) and the agentgate chain.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from mitmproxy import master, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig

from .settings import Settings, parse_hostport

log = logging.getLogger("agentgate")


class GatewayMaster(master.Master):
    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts, with_termlog=False)
        self.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            errorcheck.ErrorCheck(),
        )


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("agentgate").setLevel(logging.DEBUG if verbose else logging.INFO)


def read_key(path: Path) -> bytes | None:
    return path.read_bytes().strip() if path.exists() else None


async def serve(settings: Settings) -> int:
    from . import chain
    from .core.credentials import CredentialBroker
    from .core.identity import TokenValidator
    from .core.policy import PolicyError, PolicyStore
    from .core.store import Store, StoreError
    from .policy import log_policy_error

    listen_host, listen_port = parse_hostport(settings.listen, "listen")
    keys = Path(settings.keys)
    store = Store(settings.db, durability=settings.durability, chain_key=read_key(keys / "chain.key"),
                  body_cap=settings.body_cap)
    try:
        store.migrate()
    except StoreError as e:
        print(f"agentgate: {e}", file=sys.stderr)
        return 2
    try:
        policies = PolicyStore(settings.policies, on_error=log_policy_error)
        current = policies.current
    except PolicyError as e:
        print(f"agentgate: the policies in {settings.policies} do not load:", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    validator = None
    if settings.oidc_issuer:
        validator = TokenValidator(settings.oidc_issuer, settings.oidc_audience.split(","),
                                   algorithms=tuple(settings.oidc_algorithms), groups_claim=settings.groups_claim,
                                   leeway=settings.oidc_leeway)
    broker = CredentialBroker(endpoint_url=settings.upstream or None, refresh_margin=settings.credential_refresh_margin)

    opts = options.Options(listen_host=listen_host, listen_port=listen_port, confdir=settings.certs)
    m = GatewayMaster(opts)
    m.addons.add(*chain(settings, store=store, policies=policies, validator=validator, broker=broker))
    m.options.update(connection_strategy="lazy", http3=False)
    store.store_policy_version(current.version, current.text)
    store.start()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, m.shutdown)

    print(f"agentgate listening on {listen_host}:{listen_port}", file=sys.stderr)
    print(f"  store:    {_safe_url(settings.db)} (durability {settings.durability})", file=sys.stderr)
    print(f"  policies: {settings.policies} (version {current.version})", file=sys.stderr)
    print(f"  CA:       {settings.ca_file}  <- agents trust this", file=sys.stderr)
    if settings.upstream:
        print(f"  upstream: {settings.upstream} (all AWS traffic, Host kept)", file=sys.stderr)
    if not settings.oidc_issuer:
        print("  WARNING: oidc_issuer is not set: every call is refused until it is set in agentgate.toml", file=sys.stderr)
    sys.stderr.flush()
    try:
        await m.run()
    finally:
        await asyncio.to_thread(store.close)
        if validator is not None:
            await validator.aclose()
    return 0


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def run(settings: Settings, verbose: bool = False) -> int:
    setup_logging(verbose)
    return asyncio.run(serve(settings))
