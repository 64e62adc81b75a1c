"""The command line as a user meets it: init, run's start-up checks, env, settings errors."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support.gateway import Gateway, free_port
from tests.support.oidc import OIDCIssuer

ROOT = Path(__file__).resolve().parent.parent
AGENTGATE = str(Path(sys.executable).parent / "agentgate")


def run(home: Path, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": str(home), "AGENTGATE_HOME": str(home)}
    return subprocess.run([AGENTGATE, *args], env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=120, cwd=cwd or home)


def test_init_creates_ca_keys_config_policies_and_store(tmp_path):
    p = run(tmp_path, "init", "--oidc-issuer", "https://issuer.example")
    assert p.returncode == 0, p.stderr
    certs = tmp_path / "certs"
    assert (certs / "mitmproxy-ca-cert.pem").exists()
    for key in ("mitmproxy-ca.pem", "mitmproxy-ca.p12"):
        assert stat.S_IMODE((certs / key).stat().st_mode) == 0o600, key
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    for key in ("chain.key", "fingerprint.key", "admin.token"):
        assert stat.S_IMODE((tmp_path / "keys" / key).stat().st_mode) == 0o600
    assert 'oidc_issuer = "https://issuer.example"' in (tmp_path / "agentgate.toml").read_text()
    assert sorted(p.name for p in (tmp_path / "policies").glob("*.yaml"))
    assert (tmp_path / "agentgate.db").exists()
    # a second init keeps what exists
    ca = (certs / "mitmproxy-ca.pem").read_bytes()
    key = (tmp_path / "keys" / "chain.key").read_bytes()
    assert run(tmp_path, "init").returncode == 0
    assert (certs / "mitmproxy-ca.pem").read_bytes() == ca and (tmp_path / "keys" / "chain.key").read_bytes() == key


def test_init_sets_what_it_is_given_in_an_existing_config(tmp_path):
    """`scripts/run` runs init first; `init --oidc-issuer URL` afterwards must still set the issuer,
    keeping the file's comments and every other setting."""
    assert run(tmp_path, "init").returncode == 0
    cfg = tmp_path / "agentgate.toml"
    text = cfg.read_text()
    cfg.write_text(text[:text.index("allow_hosts = []")] + 'allow_hosts = ["pypi.org"]  # mine\n'
                   + text[text.index("allow_hosts = []"):].split("\n", 1)[1])
    before = cfg.read_text()
    p = run(tmp_path, "init", "--oidc-issuer", "https://issuer.example", "--listen", "127.0.0.1:9090")
    assert p.returncode == 0, p.stderr
    assert f"{cfg}: oidc_issuer set to 'https://issuer.example' (was '')" in p.stdout
    assert f"{cfg}: listen set to '127.0.0.1:9090' (was '127.0.0.1:8080')" in p.stdout
    after = cfg.read_text()
    assert 'oidc_issuer = "https://issuer.example"' in after and 'listen = "127.0.0.1:9090"' in after
    changed = [line for line in after.splitlines() if line not in before.splitlines()]
    assert len(changed) == 2  # the two settings' lines, nothing else; their comments kept
    assert "# the issuer whose tokens agents present" in next(x for x in changed if x.startswith("oidc_issuer"))
    assert 'allow_hosts = ["pypi.org"]  # mine' in after
    settings = tomllib.loads(after)
    assert (settings["listen"], settings["oidc_issuer"], settings["allow_hosts"]) == (
        "127.0.0.1:9090", "https://issuer.example", ["pypi.org"])
    # the same again changes nothing and says nothing of it; a bad value is refused and not written
    again = run(tmp_path, "init", "--oidc-issuer", "https://issuer.example")
    assert again.returncode == 0 and "set to" not in again.stdout
    bad = run(tmp_path, "init", "--listen", "nonsense")
    assert bad.returncode == 1 and bad.stderr.strip() == "Error: listen must be HOST:PORT, not 'nonsense'"
    assert cfg.read_text() == after


def test_init_makes_a_home_that_does_not_exist_yet_and_says_when_it_cannot(tmp_path):
    home = tmp_path / "not" / "yet"
    p = run(home, "init", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (home / "agentgate.toml").exists() and (home / "agentgate.db").exists()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    p = run(blocker / "home", "init", cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"Error: cannot create {blocker / 'home'}: Not a directory"]


def test_the_repository_never_commits_certs_keys_or_stores():
    for path in ("certs/mitmproxy-ca.pem", "keys/chain.key", "agentgate.db", "agentgate.toml"):
        p = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert p.returncode == 0, f"{path} is not ignored by git"


def test_run_before_init_says_what_to_do(tmp_path):
    p = run(tmp_path, "run")
    assert p.returncode != 0 and "agentgate init" in p.stderr and "Traceback" not in p.stderr


def test_bad_settings_are_one_line_errors(tmp_path):
    same = free_port()
    run(tmp_path, "init")
    for args, env, words in (
        (["run", "--listen", "nonsense"], {}, "listen must be HOST:PORT"),
        (["run"], {"AGENTGATE_DURABILITY": "maybe"}, "durability must be"),
        (["run"], {"AGENTGATE_STORE_WRITER": "fork"}, "store_writer must be 'process' or 'thread', not 'fork'"),
        (["run", "--upstream", "ftp://x"], {}, "upstream must be"),
        (["run", "--workers", "1000"], {}, "workers must be between 1 and 64, not 1000"),  # none started
        (["run", "--db", "nope"], {}, "'nope' is not a database URL: use sqlite:///PATH or postgresql+psycopg://"),
        (["run"], {"AGENTGATE_OIDC_ISSUER": "notaurl"}, "oidc_issuer must be the issuer's URL"),
        (["run"], {"AGENTGATE_APPROVAL_HOLD": "-5"}, "approval_hold must be a number of seconds from 0 to 3600, not -5"),
        (["run"], {"AGENTGATE_MAX_PENDING_APPROVALS": "0"}, "max_pending_approvals must be 1 or more, not 0"),
        (["env", "--gateway", "http://gw:8080"], {}, "must be HOST:PORT (a host name or address, no scheme)"),
        (["env", "--region", "us-east-1\ncredential_process = /bin/evil"], {}, "must be an AWS region name"),
        (["run"], {"AGENTGATE_DB": "mysql://x@127.0.0.1/db"}, "the store must be SQLite or PostgreSQL, not 'mysql'"),
        (["run", "--workers", "0"], {}, "workers must be between 1 and 64, not 0"),
        (["run", "--upstream", "http://"], {}, "upstream must be an http:// or https:// URL with a host"),
        (["run", "--upstream", "http://:5000"], {}, "upstream must be an http:// or https:// URL with a host"),
        (["run", "--listen", f"127.0.0.1:{same}"], {"AGENTGATE_CONSOLE_LISTEN": f"0.0.0.0:{same}"},
         f"listen and console_listen both name port {same}"),
        (["run"], {"AGENTGATE_OIDC_LEEWAY": "-5"}, "oidc_leeway must be a number of seconds from 0 to 3600, not -5"),
        (["run"], {"AGENTGATE_APPROVAL_HOLD": "inf"}, "approval_hold must be a number of seconds from 0 to 3600"),
        (["run"], {"AGENTGATE_GRANT_MAX": "-1"}, "grant_max must be a number of seconds above 0, not -1"),
        (["run"], {"AGENTGATE_OIDC_ALGORITHMS": '["HS256"]'}, "oidc_algorithms must be asymmetric algorithms"),
        (["run"], {"AGENTGATE_OIDC_ALGORITHMS": "RS256,PS256"},
         "the only ones agentgate verifies (not RSASSA-PSS, PS256 to PS512, nor EdDSA), not ['PS256']"),
        (["run"], {"AGENTGATE_OIDC_AUDIENCE": ""}, "oidc_audience must name the audience tokens carry"),
        (["run"], {"AGENTGATE_GROUPS_CLAIM": " "}, "groups_claim must name the token's claim"),
        (["run"], {"AGENTGATE_CONSOLE_URL": "javascript:x"}, "console_url must be an http:// or https:// URL"),
        (["run", "--listen", "127.0.0.1:0"], {}, "listen must be HOST:PORT, not '127.0.0.1:0'"),
        (["run"], {"AGENTGATE_HEARTBEAT_TIMEOUT": "1"},
         "heartbeat_timeout must be a number of seconds from 2 to 3600 (0: workers are not watched), not 1\n"),
        (["run"], {"AGENTGATE_HEARTBEAT_TIMEOUT": "nan"}, "heartbeat_timeout must be a number of seconds from 2"),
        # a value of the wrong kind says where it was given and what the setting takes
        (["run"], {"AGENTGATE_APPROVAL_HOLD": "20s"},
         "setting approval_hold has an unusable value '20s' (from AGENTGATE_APPROVAL_HOLD): it takes a number"),
        (["run"], {"AGENTGATE_MAX_BODY_BYTES": "100MB"},
         "setting max_body_bytes has an unusable value '100MB' (from AGENTGATE_MAX_BODY_BYTES): it takes a whole number"),
        (["run"], {"AGENTGATE_FAIL_OPEN": "maybe"},
         "setting fail_open has an unusable value 'maybe' (from AGENTGATE_FAIL_OPEN): it takes true or false"),
    ):
        p = run(tmp_path, *args, env=env)
        assert p.returncode != 0 and words in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    (tmp_path / "agentgate.toml").write_text("no_such_setting = 1\n")
    p = run(tmp_path, "run")
    assert p.returncode != 0 and "unknown setting 'no_such_setting'" in p.stderr
    (tmp_path / "agentgate.toml").write_text('approval_hold = "20s"\n')
    p = run(tmp_path, "run")
    assert p.returncode != 0 and p.stderr.strip() == (
        f"Error: setting approval_hold has an unusable value '20s' (from {tmp_path / 'agentgate.toml'}): it takes a number"
    ), p.stderr


def test_a_number_out_of_range_is_printed_as_it_was_written(tmp_path):
    """A setting that takes seconds holds a float: its range error said "not 5000.0" of an
    approval_hold written 5000. Each says the number as agentgate.toml or the variable gave it."""
    run(tmp_path, "init", "--oidc-issuer", "https://issuer.example")
    cfg = tmp_path / "agentgate.toml"
    kept = cfg.read_text()
    for line, said in (
        ("approval_hold = 5000", "approval_hold must be a number of seconds from 0 to 3600, not 5000"),
        ("approval_hold = 3600.5", "approval_hold must be a number of seconds from 0 to 3600, not 3600.5"),
        ("drain_seconds = 7200", "drain_seconds must be a number of seconds from 0 to 3600, not 7200"),
        ("oidc_leeway = -30", "oidc_leeway must be a number of seconds from 0 to 3600, not -30"),
        ("heartbeat_timeout = 1", "heartbeat_timeout must be a number of seconds from 2 to 3600 "
                                  "(0: workers are not watched), not 1"),
        ("commit_timeout = 0", "commit_timeout must be a number of seconds above 0, not 0"),
        ("grant_max = -60", "grant_max must be a number of seconds above 0, not -60"),
        ("oidc_jwks_cache = 0", "oidc_jwks_cache must be a number of seconds above 0, not 0"),
        ("upstream_timeout = -1", "upstream_timeout must be a number of seconds (0 for no bound), not -1"),
        ("credential_refresh_margin = -300", "credential_refresh_margin must be a number of seconds, 0 or more, "
                                             "not -300"),
    ):
        name = line.split(" = ")[0]
        cfg.write_text("\n".join(ln for ln in kept.splitlines() if not ln.startswith(f"{name} ")) + f"\n{line}\n")
        p = run(tmp_path, "calls", "list")
        assert p.returncode != 0 and p.stderr.strip() == f"Error: {said}", (line, p.stderr)
        value = line.split(" = ")[1]
        cfg.write_text(kept)
        p = run(tmp_path, "calls", "list", env={f"AGENTGATE_{name.upper()}": value})
        assert p.returncode != 0 and p.stderr.strip() == f"Error: {said}", (name, value, p.stderr)
    # a role whose credentials would be renewed on every call: the margin as it was written
    (tmp_path / "policies" / "roles.yaml").write_text(
        "version: 1\ndefault: deny\nroles:\n  - principal: {groups: [data-agents]}\n"
        "    role_arn: arn:aws:iam::123456789012:role/agent-role\n    duration: 1h\n")
    p = run(tmp_path, "run", "--listen", f"127.0.0.1:{free_port()}", env={"AGENTGATE_CREDENTIAL_REFRESH_MARGIN": "1000000"})
    assert p.returncode != 0 and "not longer than credential_refresh_margin (1000000s)" in p.stderr, p.stderr


def test_a_misspelled_setting_variable_is_named_with_the_setting_it_reads_like(tmp_path):
    """A misspelled key in agentgate.toml stops run; a misspelled AGENTGATE_* variable was ignored
    without a word (an approval_hold of 5 meant, the default 20 in force). Now one warning line
    names it and the setting it reads like; the variables that are not settings (AGENTGATE_HOME,
    an agent's AGENTGATE_TOKEN, ...) and names far from every setting's say nothing."""
    run(tmp_path, "init", "--oidc-issuer", "https://issuer.example")
    p = run(tmp_path, "calls", "list", env={"AGENTGATE_APROVAL_HOLD": "5", "AGENTGATE_TOKEN": "t",
                                            "AGENTGATE_TOKEN_FILE": str(tmp_path / "t"), "AGENTGATE_SOMETHING_ELSE": "1"})
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == ("agentgate: warning: AGENTGATE_APROVAL_HOLD is not a setting and is ignored: "
                                "did you mean AGENTGATE_APPROVAL_HOLD?"), p.stderr
    p = run(tmp_path, "calls", "list", env={"AGENTGATE_APPROVAL_HOLD": "5"})
    assert p.returncode == 0 and p.stderr == "", p.stderr


def test_policies_that_stop_run_leave_no_store_behind(tmp_path):
    run(tmp_path, "init", "--oidc-issuer", "https://issuer.example")
    (tmp_path / "a-file").write_text("version: 1\n")
    for policies, words in ((tmp_path / "nope", "no such policies directory"),
                            (tmp_path / "a-file", "not a directory: policies names the directory")):
        db = tmp_path / f"new-{policies.name}.db"
        p = run(tmp_path, "run", "--listen", f"127.0.0.1:{free_port()}", "--policies", str(policies),
                env={"AGENTGATE_DB": f"sqlite:///{db}", "AGENTGATE_CONSOLE_LISTEN": ""})
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert not db.exists()  # nothing half-started: no empty store to mistake for the real one


def test_broken_policies_stop_run_with_file_and_line(tmp_path):
    run(tmp_path, "init", "--oidc-issuer", "https://issuer.example")
    (tmp_path / "policies" / "zz-broken.yaml").write_text("version: 1\nrules:\n  - id: x\n    decision: perhaps\n")
    p = run(tmp_path, "run", "--listen", f"127.0.0.1:{free_port()}")
    assert p.returncode != 0 and "zz-broken.yaml:" in p.stderr and "Traceback" not in p.stderr


def test_env_without_a_token_file_reads_the_token_from_the_environment(tmp_path):
    run(tmp_path, "init")
    out = run(tmp_path, "env").stdout
    assert 'HTTPS_PROXY="http://agent:${AGENTGATE_TOKEN}@127.0.0.1:8080"' in out
    assert "aws-credentials --token-env AGENTGATE_TOKEN" in out


def test_env_away_from_the_gateways_home_or_with_an_expired_token_says_so(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = run(elsewhere, "env")  # no agentgate.toml, no CA here: not paths that do not exist
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip() == (f"Error: no CA at {elsewhere / 'certs' / 'mitmproxy-ca-cert.pem'}: run `agentgate "
                                "init` first, or run this where the gateway's agentgate.toml is (or with "
                                "AGENTGATE_HOME set to that directory)")
    run(tmp_path, "init")
    with OIDCIssuer() as issuer:
        token = tmp_path / "token"
        token.write_text(issuer.mint("agent-1", expires_in=-60))
        p = run(tmp_path, "env", "--token-file", str(token))
        assert p.returncode == 0 and "export HTTPS_PROXY=" in p.stdout
        assert p.stderr.startswith(f"warning: the token in {token} expired at ")
        assert "with --no-proxy-token the SDK presents the token it re-reads from the file" in p.stderr
        token.write_text(issuer.mint("agent-1"))
        p = run(tmp_path, "env", "--token-file", str(token))
        assert p.returncode == 0 and p.stderr == ""
        assert "# after the token is refreshed, eval this again" in p.stdout
        p = run(tmp_path, "env", "--token-file", str(token), "--no-proxy-token")
        assert "export HTTPS_PROXY=http://127.0.0.1:8080\n" in p.stdout and token.read_text() not in p.stdout


def test_a_rotated_signing_key_is_accepted_by_a_running_gateway(tmp_path, moto):
    with OIDCIssuer() as issuer, Gateway(tmp_path / "gw", issuer=issuer.issuer, upstream=moto.url,
                                         aws_key=(moto.broker.access_key_id, moto.broker.secret_access_key)) as gw:
        from tests.test_identity_e2e import client

        assert client(gw, proxy_token=issuer.mint("rot-1")).get_caller_identity()["Arn"].endswith("/rot-1")
        issuer.rotate()
        assert client(gw, proxy_token=issuer.mint("rot-2")).get_caller_identity()["Arn"].endswith("/rot-2")


def test_run_says_when_it_creates_the_store(tmp_path):
    """A mistyped --db starts an empty store: the start-up lines say so; the store init made does not."""
    assert run(tmp_path, "init").returncode == 0
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AGENTGATE_HOME": str(tmp_path),
            "AGENTGATE_LISTEN": f"127.0.0.1:{free_port()}", "AGENTGATE_CONSOLE_LISTEN": ""}

    def banner(*args: str) -> str:
        proc = subprocess.Popen([AGENTGATE, "run", *args], env=base, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        lines = []
        try:
            for line in proc.stderr:
                lines.append(line)
                if "agents trust this" in line:
                    break
        finally:
            proc.terminate()
            proc.wait(30)
        return "".join(lines)
    assert "NEW: no store was there" not in banner()
    typo = tmp_path / "agentgat.db"
    assert "NEW: no store was there, this one was created now" in banner("--db", f"sqlite:///{typo}")
    assert typo.exists()


def test_every_format_character_is_written_out():
    """What the command line, the webhook, the console and the report write out covers every
    character Unicode calls a format character (bidirectional overrides, zero-width spaces, tag
    characters...): a newer Unicode in a newer Python that adds one fails here."""
    import json
    import unicodedata

    from addons.core.chain import JSON_WRITTEN_OUT, ONE_LINE, WRITTEN_OUT

    format_characters = {c for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"}
    assert format_characters <= set(WRITTEN_OUT) and format_characters <= set(JSON_WRITTEN_OUT)
    spaces = {c for c in range(0x110000) if unicodedata.category(chr(c)) == "Zs"} - {0x20}
    assert spaces <= set(WRITTEN_OUT)  # they look like the space they are not
    for shows_as_nothing in "\u034f\u3164\ufe0f\U000e0100\u2800\u115f":  # not format characters, but blank
        assert ("backup" + shows_as_nothing + ".sql").translate(WRITTEN_OUT) != "backup" + shows_as_nothing + ".sql"
    assert "日本語 العربية é".translate(WRITTEN_OUT) == "日本語 العربية é"  # text that shows is shown
    key = "x\u202elqs.pukcab\u200b\U000e0041\x1b[2J\n\u2028"
    assert key.translate(WRITTEN_OUT) == "x\\u202elqs.pukcab\\u200b\\U000e0041\\x1b[2J\n\u2028"
    assert key.translate(ONE_LINE) == "x\\u202elqs.pukcab\\u200b\\U000e0041\\x1b[2J\\n\\u2028"
    text = json.dumps({"Key": key + " é"}, ensure_ascii=False).translate(JSON_WRITTEN_OUT)
    assert json.loads(text) == {"Key": key + " é"} and "\u202e" not in text and " é" in text  # other text as it is


def test_env_names_a_projected_token_by_its_link_so_the_sdk_reads_each_refreshed_token(tmp_path, monkeypatch):
    """Kubernetes projects a token as token -> ..data/token, ..data a link to a directory of the
    moment that it replaces and deletes at each refresh: the profile's credential_process must name
    the link (and be split as a shell splits it: a path with a space)."""
    import boto3

    run(tmp_path, "init")
    with OIDCIssuer() as issuer:
        mount = tmp_path / "service account"
        (mount / "..2026_11_27_00_00_01.1").mkdir(parents=True)
        (mount / "..2026_11_27_00_00_01.1" / "token").write_text(issuer.mint("agent-k8s"))
        (mount / "..data").symlink_to("..2026_11_27_00_00_01.1")
        (mount / "token").symlink_to("..data/token")
        out = run(tmp_path, "env", "--token-file", str(mount / "token"), "--no-proxy-token").stdout
        process = next(line for line in out.splitlines() if line.startswith("credential_process = "))
        assert "..2026" not in process
        config = tmp_path / "aws-config"
        config.write_text(f"[profile agentgate]\nregion = us-east-1\n{process}\n")

        def sdk_token() -> str:
            return boto3.session.Session(profile_name="agentgate").get_credentials().get_frozen_credentials().token

        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        assert sdk_token() == (mount / "token").read_text().strip()
        # the kubelet's refresh: a new directory, ..data switched to it, the old one deleted
        (mount / "..2026_11_27_01_00_01.2").mkdir()
        (mount / "..2026_11_27_01_00_01.2" / "token").write_text(issuer.mint("agent-k8s", expires_in=7200))
        (mount / "..data.tmp").symlink_to("..2026_11_27_01_00_01.2")
        os.replace(mount / "..data.tmp", mount / "..data")
        shutil.rmtree(mount / "..2026_11_27_00_00_01.1")
        assert sdk_token() == (mount / "..2026_11_27_01_00_01.2" / "token").read_text().strip()


# -- bad input that ended in a traceback, was taken silently, or was told misleadingly ----------------------


def jwt(claims: str, signature: str = "c2ln", header: str = '{"alg":"RS256"}') -> str:
    """A token shaped as its parts say (not signed): ``claims`` is the JSON text of its payload."""
    import base64

    def part(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
    return f"{part(header)}.{part(claims)}.{signature}"


def one_line(p: subprocess.CompletedProcess, code: int = 1, progress: bool = False) -> str:
    """The one line of error a command ended with: its exit code as given, no traceback, and nothing
    on standard output (nothing to eval, nothing printed for an SDK) but, with ``progress``, what
    init says it did before."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code and len(lines) == 1 and lines[0].startswith("Error: "), (p.returncode, p.stderr)
    assert (progress or p.stdout == "") and "Traceback" not in p.stderr, p.stdout
    return lines[0][len("Error: "):]


def unprivileged() -> list[str]:
    """A prefix that runs a command as root without the capabilities that pass over file modes
    (a file at mode 000 is then unreadable, as for any other user); nothing for another user."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        import pytest

        pytest.skip("root without setpriv: a file's mode does not stop it")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_a_token_file_that_holds_no_usable_jwt_is_one_line_for_every_command_that_reads_it(tmp_path):
    """A token file whose claims are JSON but no object, an exp no time can hold (or no number), bytes
    that are not UTF-8, or characters no JWT holds (an '@' that moves HTTPS_PROXY's host elsewhere,
    spaces, line breaks) ended env and aws-credentials in a traceback, or was taken: env printed
    HTTPS_PROXY=http://agent:a.b.c@evil.example:9/x@127.0.0.1:8080, whose host is evil.example.
    Each is one line and exit 1, with nothing printed to eval; approvals and access read their token
    file the same way (exit 2: bad input)."""
    run(tmp_path, "init")
    token = tmp_path / "token"
    for content, said in (
        (jwt("[1,2]"), f"the token file {token} does not hold a JWT: its claims are not a JSON object"),
        (jwt('{"exp": 99999999999999}'), f"the exp claim of the token in {token} is no time: 99999999999999 seconds "
                                         "is past the year 9999"),
        (jwt('{"exp": 1e400}'), f"the exp claim of the token in {token} is no time: inf seconds is past the year 9999"),
        (jwt('{"exp": true}'), f"the exp claim of the token in {token} is not a number of seconds: true"),
        (jwt('{"exp": 4000000000}', "c2ln@evil.example:9/x"),
         f"the token file {token} does not hold a JWT: it holds '@', which no JWT holds; a JWT is three base64url "
         "parts separated by dots (header.claims.signature)"),
        (jwt('{"exp": 4000000000}') + " x", f"the token file {token} does not hold a JWT: it holds a space"),
        ("a.b\nc.d", f"the token file {token} does not hold a JWT: it holds a line break"),
        (b"\xff\xfe\x00", f"the token file {token} is not text (byte 0xff at offset 0 is not UTF-8): it must hold the "
                          "token alone"),
    ):
        token.write_bytes(content if isinstance(content, bytes) else content.encode())
        for command in ("aws-credentials", "env"):
            assert one_line(run(tmp_path, command, "--token-file", str(token))).startswith(said), (command, content)
    for args, env in ((["approvals", "approve", "ap-1", "--token-file", str(token)], {}),
                      (["approvals", "deny", "ap-1", "--reason", "no"], {"AGENTGATE_TOKEN_FILE": str(token)}),
                      (["access", "request", "--role", "default-agent-role", "--for", "1h", "--reason", "r",
                        "--token-file", str(token)], {})):
        assert one_line(run(tmp_path, *args, env=env), code=2).startswith(f"the token file {token} is not text"), args
    # a good token with white space around it (a file's last line break) is taken, as the file holds it
    good = jwt('{"exp": 4000000000}')
    token.write_text(f"  {good}\n")
    out = run(tmp_path, "aws-credentials", "--token-file", str(token))
    assert out.returncode == 0 and '"SessionToken": "' + good + '"' in out.stdout, out.stderr
    assert f"export HTTPS_PROXY=http://agent:{good}@127.0.0.1:8080\n" in run(tmp_path, "env", "--token-file",
                                                                             str(token)).stdout
    # both sources given: which one is meant is not guessed
    p = run(tmp_path, "aws-credentials", "--token-file", str(token), "--token-env", "AGENTGATE_TOKEN",
            env={"AGENTGATE_TOKEN": good})
    assert p.returncode == 2 and p.stderr.strip().endswith("Error: give --token-file F or --token-env NAME, not both")
    p = run(tmp_path, "aws-credentials", "--token-env", "AGENTGATE_TOKEN", env={"AGENTGATE_TOKEN": good + "@x"})
    assert one_line(p).startswith("the environment variable AGENTGATE_TOKEN does not hold a JWT: it holds '@'")


def test_env_quotes_every_line_for_the_shell_that_evals_it(tmp_path):
    """--config-file was printed inside double quotes as given: a path with $(...) ran a command when
    the output was eval'd, one with a quote broke the eval. Every line is quoted for the shell now;
    a token file whose name holds a line break, which would end the AWS config file's heredoc early
    (and run what follows it), is refused."""
    run(tmp_path, "init")
    token = tmp_path / "token"
    token.write_text(jwt('{"exp": 4000000000}'))
    ran = tmp_path / "ran"
    config = tmp_path / 'dir $(touch ran) "quoted" `touch ran` \'single\'' / "config"
    p = run(tmp_path, "env", "--token-file", str(token), "--config-file", str(config))
    assert p.returncode == 0, p.stderr
    shell = subprocess.run(["bash", "-c", 'eval "$1" && printf %s "$AWS_CONFIG_FILE|$HTTPS_PROXY|$AWS_CA_BUNDLE"',
                            "bash", p.stdout], capture_output=True, text=True, cwd=tmp_path, timeout=30,
                           env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert shell.returncode == 0 and shell.stderr == "", shell.stderr
    assert not ran.exists()
    assert shell.stdout == (f"{config}|http://agent:{token.read_text()}@127.0.0.1:8080|"
                            f"{tmp_path / 'certs' / 'mitmproxy-ca-cert.pem'}")
    assert "[profile agentgate]\nregion = us-east-1\ncredential_process = " in config.read_text()
    odd = tmp_path / "token\nAGENTGATE_AWS_CONFIG\ntouch ran"
    odd.write_text(token.read_text())
    p = run(tmp_path, "env", "--token-file", str(odd))
    assert p.returncode == 2 and "holds a line break or control character" in p.stderr and p.stdout == ""


def test_settings_that_crashed_or_were_taken_silently_are_one_line_errors(tmp_path):
    """agentgate.toml that is not UTF-8, or whose agentgate is no table, a whole number given as inf,
    1.9 or true, a commit_timeout of inf, a webhook_url without a host, allow_hosts entries that name
    no host, an upstream with a space, a path or a query, a listen with an unbalanced bracket, and an
    AGENTGATE_CONFIG that names no file: each stopped every command with a traceback or was taken
    (1.9 cut to 1, inf waited for ever, '*' tunnelled every host). Each is one line naming the
    setting and the value."""
    run(tmp_path, "init")
    cfg = tmp_path / "agentgate.toml"
    kept = cfg.read_text()
    for text, said in (
        (b'listen = "\xff"\n', f"{cfg} is not UTF-8 text (byte 0xff at offset 10): a TOML file is UTF-8; save it so"),
        (b"agentgate = 5\n", f"{cfg}: agentgate must be a table of settings ([agentgate]), not 5"),
        (b'agentgate = "x"\n', f"{cfg}: agentgate must be a table of settings ([agentgate]), not 'x'"),
        (b"agentgate = [1]\n", f"{cfg}: agentgate must be a table of settings ([agentgate]), not [1]"),
        (b"max_header_bytes = inf\n", f"setting max_header_bytes has an unusable value inf (from {cfg}): it takes a "
                                      "whole number"),
        (b"max_pending_approvals = -inf\n", "setting max_pending_approvals has an unusable value -inf"),
        (b"busy_poll_us = 1.9\n", f"setting busy_poll_us has an unusable value 1.9 (from {cfg}): it takes a whole "
                                  "number"),
        (b"workers = true\n", f"setting workers has an unusable value true (from {cfg}): it takes a whole number"),
        (b"approval_hold = false\n", "setting approval_hold has an unusable value false"),
        (b"commit_timeout = inf\n", "commit_timeout must be a number of seconds above 0, not inf"),
        (b"commit_timeout = nan\n", "commit_timeout must be a number of seconds above 0, not nan"),
        (b'webhook_url = "http://"\n', "webhook_url must be an http:// or https:// URL with a host, not 'http://'"),
        (b'allow_hosts = [""]\n', "allow_hosts entry '': an empty entry"),
        (b'allow_hosts = ["pypi.org", "*"]\n', "allow_hosts entry '*': it would tunnel every host untouched"),
        (b'allow_hosts = ["http://x/y"]\n', "allow_hosts entry 'http://x/y': a URL: give its host alone"),
        (b'allow_hosts = ["a b"]\n', "allow_hosts entry 'a b': not a host name"),
        (b'allow_hosts = ["x.example:99999"]\n', "allow_hosts entry 'x.example:99999': port 99999 is out of range"),
    ):
        cfg.write_bytes(text)
        assert one_line(run(tmp_path, "calls", "list")).startswith(said), (text, said)
    cfg.write_text(kept.replace("allow_hosts = []", 'allow_hosts = ["pypi.org", "*.github.com", "files.example:443", '
                                                    '"10.0.0.1"]') + "workers = 2.0\n")
    # what README documents, and a whole number written as a float, are taken
    assert run(tmp_path, "calls", "list").returncode == 0
    cfg.write_text(kept)
    for args, env, said in (
        (["run", "--upstream", "http://a b"], {}, "upstream must be an http:// or https:// URL with a host"),
        (["run", "--upstream", "http://127.0.0.1:5000/path"], {},
         "upstream must be an endpoint's URL, scheme, host and port only (each call keeps its own path and query), "
         "not 'http://127.0.0.1:5000/path': give http://127.0.0.1:5000"),
        (["run", "--upstream", "http://127.0.0.1:5000?x=1"], {}, "upstream must be an endpoint's URL"),
        (["run", "--listen", "[::1:27612"], {},
         "listen must be HOST:PORT, an IPv6 address within [ and ] ([::1]:8080), not '[::1:27612'"),
        (["run", "--listen", "::1]:27612"], {}, "listen must be HOST:PORT, an IPv6 address within [ and ]"),
        (["calls", "list"], {"AGENTGATE_CONFIG": str(tmp_path / "missing.toml")},
         f"AGENTGATE_CONFIG names {tmp_path / 'missing.toml'}, which does not exist"),
    ):
        assert one_line(run(tmp_path, *args, env=env)).startswith(said), (args, env)
    # init makes the file AGENTGATE_CONFIG names, when it is not there yet
    p = run(tmp_path, "init", env={"AGENTGATE_CONFIG": str(tmp_path / "other.toml")})
    assert p.returncode == 0 and (tmp_path / "other.toml").exists(), p.stderr


def test_run_says_a_listen_host_that_cannot_be_used_is_not_a_port_in_use(tmp_path):
    """A listen host that does not resolve was told "stop what holds it, or set listen to a free
    HOST:PORT", the advice for a port in use."""
    run(tmp_path, "init")
    for host in ("999.1.1.1", "example.invalid"):
        said = one_line(run(tmp_path, "run", "--listen", f"{host}:27612"))
        assert said.startswith(f"cannot listen on {host}:27612 (listen): the host '{host}' cannot be resolved ("), said
        assert said.endswith("); set listen to an address of this machine (127.0.0.1, 0.0.0.0 for every one) or a "
                             "name that resolves to one") and "free HOST:PORT" not in said
    said = one_line(run(tmp_path, "run", "--listen", "192.0.2.1:27612"))  # TEST-NET-1: no address of this machine
    assert said.startswith("cannot listen on 192.0.2.1:27612 (listen): 192.0.2.1 is not an address of this machine")


def test_a_ca_that_cannot_be_loaded_stops_init_and_run_before_a_store_or_a_port(tmp_path):
    """A CA key that is garbage ended init in a ValueError traceback, and run started the store's
    writer before mitmproxy logged an "Addon error" with a traceback; an unreadable one the same.
    Both now stop with one line saying what to do, before a store is made."""
    run(tmp_path, "init")
    (tmp_path / "agentgate.db").unlink()
    key = tmp_path / "certs" / "mitmproxy-ca.pem"
    good = key.read_bytes()
    key.write_text("garbage\n")
    said = (f"the CA key {key} cannot be loaded (Unable to load PEM file): restore it from a backup, or move "
            f"{tmp_path / 'certs'} aside and run `agentgate init` for a new CA (agents must then trust its new "
            "certificate)")
    assert one_line(run(tmp_path, "run", "--listen", f"127.0.0.1:{free_port()}")) == said
    assert not (tmp_path / "agentgate.db").exists()
    p = run(tmp_path, "init")
    assert p.returncode == 1 and p.stderr.strip() == f"Error: {said}" and "Traceback" not in p.stderr
    key.write_bytes(good)
    key.chmod(0o000)
    p = subprocess.run([*unprivileged(), AGENTGATE, "run", "--listen", f"127.0.0.1:{free_port()}"], cwd=tmp_path,
                       env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AGENTGATE_HOME": str(tmp_path)},
                       capture_output=True, text=True, timeout=60)
    assert one_line(p) == (f"the CA key {key} cannot be read (Permission denied): run agentgate as the user that owns "
                           "it, or give this user read access to it")
    assert not (tmp_path / "agentgate.db").exists()


def test_init_mends_a_missing_ca_certificate_and_names_what_it_cannot_mend(tmp_path):
    """init said "CA ready" with the CA's certificate deleted (its key there), and env and run went on
    saying "run agentgate init first"; it said nothing of a policies setting naming a file; with a
    table or alembic_version dropped from the store it said "store ready" (or "table approvals already
    exists") while calls list sent its user back to init. Now the certificate is written again from
    the key, and the rest is one line saying what is wrong and what to do."""
    from cryptography import x509

    run(tmp_path, "init")
    certs = tmp_path / "certs"
    (certs / "mitmproxy-ca-cert.pem").unlink()
    assert "run `agentgate init` first" in one_line(run(tmp_path, "env"))
    p = run(tmp_path, "init")
    assert p.returncode == 0, p.stderr
    assert (f"{certs / 'mitmproxy-ca-cert.pem'} was missing: written again from the CA key "
            f"{certs / 'mitmproxy-ca.pem'}") in p.stdout
    written = x509.load_pem_x509_certificate((certs / "mitmproxy-ca-cert.pem").read_bytes())
    assert written == x509.load_pem_x509_certificates((certs / "mitmproxy-ca.pem").read_bytes())[0]
    assert stat.S_IMODE((certs / "mitmproxy-ca-cert.pem").stat().st_mode) == 0o644
    assert run(tmp_path, "env").returncode == 0

    shutil.rmtree(tmp_path / "policies")
    (tmp_path / "policies").write_text("version: 1\n")
    assert one_line(run(tmp_path, "init"), progress=True) == (
        f"policies names {tmp_path / 'policies'}, which is not a directory: the policy files go in a directory; move "
        "that file aside (and run `agentgate init` again for the default policies), or set policies to the directory "
        "of yours")
    (tmp_path / "policies").unlink()
    assert run(tmp_path, "init").returncode == 0

    import sqlite3

    fix = ("restore it from a backup, or set db to a new store (`agentgate init` makes one) and keep this one as "
           "evidence")
    for table, said in (("approvals", f"its schema is this agentgate's, but its table approvals is gone: {fix}"),
                        ("alembic_version", "it has agentgate's tables (approval_events, approvals, calls, "
                                            "checkpoints, console_signouts, policy_versions, sessions) but no record "
                                            "of its schema's revision (the alembic_version table is gone or empty): "
                                            + fix)):
        db = tmp_path / f"without-{table}.db"
        env = {"AGENTGATE_DB": f"sqlite:///{db}"}
        assert run(tmp_path, "init", env=env).returncode == 0
        with sqlite3.connect(db) as c:
            c.execute(f"DROP TABLE {table}")
        for command in (["init"], ["calls", "list"]):
            assert one_line(run(tmp_path, *command, env=env), progress=True) == \
                f"the store at sqlite:///{db} is damaged: {said}", command


def test_a_relative_path_is_the_current_directorys_on_the_command_line_and_the_files_in_agentgate_toml(
        tmp_path, monkeypatch):
    """`run --policies DIR` took a relative DIR in AGENTGATE_HOME, `policy check DIR` and `policy
    explain --policies DIR` in the current directory. A path typed on the command line (or in an
    AGENTGATE_* variable) is the current directory's for every command; one in agentgate.toml, the
    file's directory's. scripts/run keeps the caller's directory."""
    home = tmp_path / "home"
    run(home, "init", cwd=tmp_path)
    work = tmp_path / "work"
    (work / "mine").mkdir(parents=True)
    (work / "mine" / "broken.yaml").write_text("version: 1\nrules: [\n")
    shutil.copytree(home / "policies", home / "mine")  # the same name in AGENTGATE_HOME, where run looked
    said = f"the policies in {work / 'mine'} do not load"
    listen = ["--listen", f"127.0.0.1:{free_port()}"]
    for args, env in ((["run", "--policies", "mine", *listen], {}),
                      (["run", *listen], {"AGENTGATE_POLICIES": "mine"})):
        p = run(home, *args, env=env, cwd=work)
        assert p.returncode == 2 and said in p.stderr and "broken.yaml:" in p.stderr, (args, p.stderr)
    p = run(home, "policy", "check", "mine", cwd=work)
    assert p.returncode == 1 and "broken.yaml:" in p.stdout, p.stdout
    (work / "claims.json").write_text('{"sub": "a"}')
    p = run(home, "policy", "explain", "--principal-file", "claims.json", "--action", "s3:GetObject",
            "--policies", "mine", cwd=work)
    assert p.returncode == 1 and "broken.yaml:" in p.stderr, p.stderr
    # in agentgate.toml: the file's directory, wherever the command runs; and so is a relative SQLite store
    from addons.settings import load_settings

    cfg = home / "agentgate.toml"
    cfg.write_text(cfg.read_text().replace('policies = "policies"', 'policies = "mine"') + 'db = "sqlite:///s.db"\n')
    monkeypatch.chdir(work)
    monkeypatch.setenv("AGENTGATE_HOME", str(home))
    s = load_settings()
    assert (s.policies, s.db) == (str(home / "mine"), f"sqlite:///{home / 's.db'}")
    s = load_settings(policies="mine", db="sqlite:///s.db")
    assert (s.policies, s.db) == (str(work / "mine"), f"sqlite:///{work / 's.db'}")
    monkeypatch.undo()
    # scripts/run passes its arguments to `agentgate run` from where it was started
    cfg.write_text(cfg.read_text().replace('policies = "mine"', 'policies = "policies"'))
    p = subprocess.run([str(ROOT / "scripts" / "run"), "--policies", "mine", *listen], cwd=work, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "AGENTGATE_HOME": str(home)})
    assert p.returncode == 2 and said in p.stderr, p.stderr
