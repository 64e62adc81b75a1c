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
