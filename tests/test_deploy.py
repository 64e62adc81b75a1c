"""The container examples in deploy/. No container engine or cluster runs here, so these tests check
what can be checked without one: the files parse and refer to each other consistently, the image's
start command initialises an empty home and runs the gateway (with the real `agentgate init`),
every agent container sets exactly the variables `agentgate env --token-file F` prints, and the
agents' configurations, moved onto loopback, reach a real gateway."""

from __future__ import annotations

import base64
import configparser
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from addons.settings import load_settings
from tests.conftest import run_agent

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
AGENTGATE = str(BIN / "agentgate")

DOCKERFILE_INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
                           "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
                           "HEALTHCHECK", "SHELL"}
CA_VARS = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "AGENTGATE_HOME": str(home)}
    p = subprocess.run([AGENTGATE, *args], env=env, capture_output=True, text=True, timeout=120, cwd=home)
    assert p.returncode == 0, f"agentgate {' '.join(args)}: {p.stderr}"
    return p


def fake_token(sub: str = "agent-1") -> str:
    """JWT-shaped: `agentgate env` reads a token without checking its signature."""
    def seg(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    claims = {"sub": sub, "aud": "agentgate", "exp": int(time.time()) + 3600}
    return f"{seg({'alg': 'RS256', 'typ': 'JWT'})}.{seg(claims)}.c2ln"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A home initialised by `agentgate init`, as the image's first start makes it."""
    h = tmp_path_factory.mktemp("deploy-home")
    cli(h, "init", "--listen", "0.0.0.0:8080")
    return h


class Printed:
    """What `agentgate env --token-file F --gateway G` prints, and the environment it leaves after eval."""

    def __init__(self, home: Path, tmp: Path, gateway: str) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.token_file = tmp / "token"
        self.token_file.write_text(fake_token())
        self.token = self.token_file.read_text()
        self.text = cli(home, "env", "--token-file", str(self.token_file), "--gateway", gateway).stdout
        self.names = set(re.findall(r"^export ([A-Za-z_][A-Za-z0-9_]*)=", self.text, re.M))
        self.unset = {n for line in self.text.splitlines() if line.startswith("unset ") for n in line.split()[1:]}
        script = tmp / "env.sh"
        script.write_text(self.text)
        agent_home = tmp / "agent-home"
        agent_home.mkdir(exist_ok=True)
        out = subprocess.run(["sh", "-c", '. "$1" && env -0', "sh", str(script)], capture_output=True, check=True,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(agent_home)}, cwd=tmp).stdout
        after = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
        self.values = {n: after[n] for n in self.names}
        self.aws_config = configparser.ConfigParser()
        self.aws_config.read_string(Path(self.values["AWS_CONFIG_FILE"]).read_text())

    @property
    def profile(self) -> configparser.SectionProxy:
        return self.aws_config[f"profile {self.values['AWS_PROFILE']}"]


def check_agent_env(env: dict, printed: Printed, where: str) -> None:
    """An agent's environment: exactly the names `agentgate env` prints; the same values where they
    are not paths (the proxy URL is checked by the caller); one CA file for every client."""
    assert set(env) == printed.names, (
        f"{where}: sets {sorted(set(env) - printed.names)} that `agentgate env` does not print, "
        f"lacks {sorted(printed.names - set(env))}")
    assert not set(env) & printed.unset, f"{where}: sets variables `agentgate env` unsets"
    assert env["https_proxy"] == env["HTTPS_PROXY"], where
    assert len({env[v] for v in CA_VARS}) == 1, f"{where}: the CA variables name different files"
    for name in printed.names - {"HTTPS_PROXY", "https_proxy", *CA_VARS, "AWS_CONFIG_FILE"}:
        assert env[name] == printed.values[name], (where, name)
    for name in (*CA_VARS, "AWS_CONFIG_FILE"):
        assert PurePosixPath(env[name]).is_absolute(), (where, name)


# ---------------------------------------------------------------------------------- Dockerfile

def dockerfile() -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments), continuation lines joined, comments and blank lines dropped."""
    out, buf, start = [], "", None
    for n, line in enumerate((DEPLOY / "Dockerfile").read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops these, inside a continuation too
        start = start or n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1]
            continue
        buf += line
        word, _, args = buf.strip().partition(" ")
        out.append((start, word, args.strip()))
        buf, start = "", None
    assert not buf, "the Dockerfile ends inside a continuation"
    return out


def instruction(name: str) -> list[str]:
    return [args for _, word, args in dockerfile() if word.upper() == name]


def dockerfile_env() -> dict:
    env = {}
    for args in instruction("ENV"):
        for pair in shlex.split(args):
            k, sep, v = pair.partition("=")
            assert sep, f"ENV {args}: write ENV NAME=VALUE"
            env[k] = v
    return env


def start_command() -> list[str]:
    (cmd,) = instruction("CMD")
    argv = json.loads(cmd)  # exec form: the gateway is PID 1 and gets SIGTERM
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return [*json.loads(instruction("ENTRYPOINT")[0]), *argv] if instruction("ENTRYPOINT") else argv


def exported_ca_name() -> str:
    """The file name the start command gives the CA certificate in CA_EXPORT_DIR."""
    (name,) = re.findall(r'"\$CA_EXPORT_DIR/([^"]+)"', " ".join(start_command()))
    return name


def test_the_dockerfile_is_well_formed():
    steps = dockerfile()
    for line, word, args in steps:
        assert word.upper() in DOCKERFILE_INSTRUCTIONS, f"Dockerfile:{line}: unknown instruction {word}"
        assert word == word.upper(), f"Dockerfile:{line}: write {word.upper()}"
        assert args, f"Dockerfile:{line}: {word} without arguments"
        exec_form = args.split(" CMD ", 1)[-1] if word == "HEALTHCHECK" else args
        if exec_form.startswith("["):
            json.loads(exec_form)  # exec form is JSON
    assert steps[0][1] == "FROM" and steps[0][2] == "python:3.12-slim"
    assert [w for _, w, _ in steps].count("FROM") == 1
    for args in instruction("COPY") + instruction("ADD"):
        *sources, _ = [a for a in shlex.split(args) if not a.startswith("--")]
        for s in sources:  # relative to the build context, the repository root (compose and README)
            assert (ROOT / s).exists(), f"COPY {s}: not in the repository"


def test_the_image_runs_as_a_user_and_keeps_its_state_on_volumes():
    users = instruction("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = dockerfile_env()
    volumes = json.loads(instruction("VOLUME")[0])
    assert env["AGENTGATE_HOME"] in volumes and env["CA_EXPORT_DIR"] in volumes
    # installed in place (-e) from the directory that also holds policies/: `agentgate init` copies
    # the default policies from beside the package
    workdir, copied, installed = "/", {}, None
    for _, word, args in dockerfile():
        if word == "WORKDIR":
            workdir = str(PurePosixPath(workdir, args))
        elif word == "COPY":
            source, dest = shlex.split(args)[-2:]
            copied[source] = str(PurePosixPath(workdir, dest))
        elif word == "RUN" and (m := re.search(r"pip install -e (\S+)", args)):
            installed = str(PurePosixPath(workdir, m.group(1)))
    assert installed and copied["addons"] == f"{installed}/addons" and copied["policies"] == f"{installed}/policies"
    exposed = {p for args in instruction("EXPOSE") for p in args.split()}
    assert "8080" in exposed
    assert " ".join(start_command()).count("agentgate run --listen 0.0.0.0:8080") == 1


def test_the_start_command_initialises_once_then_runs_the_gateway(tmp_path):
    """The image's CMD, run here with a stand-in for `agentgate run` (nothing listens): the first
    start initialises the empty volume and exports the CA certificate, a second start only runs."""
    shim = tmp_path / "bin"
    shim.mkdir()
    log = tmp_path / "calls.log"
    (shim / "agentgate").write_text(
        f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\n[ "$1" = run ] && exit 0\nexec {AGENTGATE} "$@"\n')
    (shim / "agentgate").chmod(0o755)
    agentgate_home, ca_dir = tmp_path / "var-lib-agentgate", tmp_path / "var-lib-agentgate-ca"
    agentgate_home.mkdir()
    ca_dir.mkdir()
    env = {**dockerfile_env(), "PATH": f"{shim}:{BIN}:/usr/bin:/bin", "HOME": str(agentgate_home),
           "AGENTGATE_HOME": str(agentgate_home), "CA_EXPORT_DIR": str(ca_dir)}
    argv = start_command()
    assert "agentgate" in " ".join(argv)

    for _ in range(2):
        p = subprocess.run(argv, env=env, cwd=agentgate_home, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    assert log.read_text().splitlines() == ["init --listen 0.0.0.0:8080", "run --listen 0.0.0.0:8080",
                                            "run --listen 0.0.0.0:8080"]
    assert 'listen = "0.0.0.0:8080"' in (agentgate_home / "agentgate.toml").read_text()
    assert list((agentgate_home / "policies").glob("*.yaml"))
    assert (agentgate_home / "keys" / "chain.key").exists()
    exported = (ca_dir / exported_ca_name()).read_text()
    assert exported == (agentgate_home / "certs" / "mitmproxy-ca-cert.pem").read_text()
    assert "BEGIN CERTIFICATE" in exported and "PRIVATE KEY" not in exported
    # readable by agents that run as another user than the gateway (it is public); its key is not
    assert stat.S_IMODE((ca_dir / exported_ca_name()).stat().st_mode) == 0o644
    assert stat.S_IMODE((agentgate_home / "certs" / "mitmproxy-ca.pem").stat().st_mode) == 0o600


# -------------------------------------------------------------------------------------- compose

def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def interpolate(value: str, env: dict) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$."""
    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        have = env.get(name)
        if op in (":?", "?") and not have:
            raise KeyError(f"{name}: {arg}")
        if op == ":-" and not have or op == "-" and have is None:
            return arg
        return have or ""
    return re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", sub, value.replace("$$", "\0")).replace("\0", "$")


def compose_vars(value: str) -> set[str]:
    return set(re.findall(r"\$\{(\w+)", value))


def volume_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of a service's volumes, short or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target, *mode = v.split(":")
            out.append((source, target, "ro" in (mode[0].split(",") if mode else [])))
        else:
            out.append((v.get("source", ""), v["target"], bool(v.get("read_only"))))
    return out


def refs(service: dict, key: str) -> dict[str, str]:
    """A service's configs or secrets: name -> path in the container."""
    out = {}
    for r in service.get(key, []):
        name = r if isinstance(r, str) else r["source"]
        target = None if isinstance(r, str) else r.get("target")
        if key == "secrets" and (not target or not target.startswith("/")):
            target = f"/run/secrets/{target or name}"
        out[name] = target or f"/{name}"
    return out


def named(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~"))


def test_compose_parses_and_its_parts_refer_to_each_other():
    c = compose()
    services, volumes = c["services"], c.get("volumes") or {}
    configs, secrets = c.get("configs") or {}, c.get("secrets") or {}
    used = {"volumes": set(), "configs": set(), "secrets": set()}
    for name, s in services.items():
        assert "image" in s or "build" in s, name
        deps = s.get("depends_on") or {}
        for dep, how in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            assert dep in services and dep != name, f"{name} depends on unknown service {dep}"
            if (how or {}).get("condition") == "service_healthy":
                assert "healthcheck" in services[dep] or ("build" in services[dep] and instruction("HEALTHCHECK")), \
                    f"{name} waits for {dep} to be healthy, and {dep} has no healthcheck"
        for source, target, _ in volume_mounts(s):
            assert target.startswith("/"), (name, target)
            if named(source):
                assert source in volumes, f"{name} mounts undeclared volume {source}"
                used["volumes"].add(source)
        for key, declared in (("configs", configs), ("secrets", secrets)):
            for ref in refs(s, key):
                assert ref in declared, f"{name} uses undeclared {key[:-1]} {ref}"
                used[key].add(ref)
        if "build" in s:
            context = (DEPLOY / s["build"]["context"]).resolve()
            assert context == ROOT and (context / s["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert set(volumes) == used["volumes"], "declared volumes no service mounts"
    assert set(configs) == used["configs"] and set(secrets) == used["secrets"]
    for name, body in {**configs, **secrets}.items():
        assert len({"file", "environment", "content", "external"} & set(body)) == 1, name


def test_compose_gateway_uses_postgresql_and_shares_the_ca_certificate_alone():
    c = compose()
    services = c["services"]
    (gateway,) = [s for s in services.values() if "build" in s]
    env = gateway["environment"]
    values = {v: "x" for v in compose_vars(json.dumps(c))}
    url = urlsplit(interpolate(env["AGENTGATE_DB"], values))
    assert url.scheme == "postgresql+psycopg"
    db = services[url.hostname]
    assert url.port == 5432 and url.username == db["environment"]["POSTGRES_USER"]
    assert url.path.lstrip("/") == db["environment"]["POSTGRES_DB"]
    assert compose_vars(env["AGENTGATE_DB"]) == compose_vars(db["environment"]["POSTGRES_PASSWORD"])
    assert url.hostname in (gateway.get("depends_on") or {})
    mounts = {t: s for s, t, _ in volume_mounts(gateway)}
    df = dockerfile_env()
    assert named(mounts[df["AGENTGATE_HOME"]]) and named(mounts[df["CA_EXPORT_DIR"]])
    assert mounts[df["AGENTGATE_HOME"]] != mounts[df["CA_EXPORT_DIR"]], "agents would see the CA key"
    for name, s in services.items():
        if s is not gateway:
            assert mounts[df["AGENTGATE_HOME"]] not in {v for v, _, _ in volume_mounts(s)}, f"{name} sees the CA key"
    assert any(p.endswith(":8080") for p in gateway.get("ports", []))


def test_compose_agents_reach_the_gateway_and_nothing_else():
    """The agent's networks are internal (no way out but the gateway) and shared with no service
    but the gateway: not PostgreSQL, whose network is internal too."""
    c = compose()
    services, networks = c["services"], c.get("networks") or {}
    (gateway_name,) = [n for n, s in services.items() if "build" in s]
    for name, s in compose_agents().items():
        nets = set(s.get("networks") or ["default"])
        assert nets and all(networks.get(n, {}).get("internal") for n in nets), (name, nets)
        for other, o in services.items():
            if other not in (name, gateway_name):
                assert not nets & set(o.get("networks") or ["default"]), f"{name} shares a network with {other}"
        assert nets <= set(services[gateway_name]["networks"]), name
    db_nets = set(services["db"]["networks"])
    assert all(networks[n].get("internal") for n in db_nets)


@pytest.fixture(scope="module")
def printed_compose(home, tmp_path_factory) -> Printed:
    return Printed(home, tmp_path_factory.mktemp("env-compose"), "gateway:8080")


def compose_agents() -> dict[str, dict]:
    return {n: s for n, s in compose()["services"].items() if "HTTPS_PROXY" in (s.get("environment") or {})}


def test_compose_agent_sets_exactly_what_agentgate_env_prints(printed_compose):
    c = compose()
    agents = compose_agents()
    assert agents, "no agent service in compose.yaml"
    (gateway_name,) = [n for n, s in c["services"].items() if "build" in s]
    ca_mount = {s: t for s, t, _ in volume_mounts(c["services"][gateway_name])}
    ca_volume = next(s for s, t in ca_mount.items() if t == dockerfile_env()["CA_EXPORT_DIR"])
    for name, agent in agents.items():
        env = agent["environment"]
        check_agent_env(env, printed_compose, f"compose service {name}")
        # transport A: the same URL `agentgate env --gateway gateway:8080` prints, the token
        # interpolated from the same variable that becomes the token file
        (token_var,) = compose_vars(env["HTTPS_PROXY"])
        assert interpolate(env["HTTPS_PROXY"], {token_var: printed_compose.token}) == printed_compose.values["HTTPS_PROXY"]
        assert urlsplit(env["HTTPS_PROXY"]).hostname == gateway_name and gateway_name in agent["depends_on"]
        secrets = refs(agent, "secrets")
        (token_path,) = [secrets[s] for s in secrets if c["secrets"][s].get("environment") == token_var]
        # the CA: the gateway's exported certificate, on the volume the gateway writes it to
        ca = PurePosixPath(env["AWS_CA_BUNDLE"])
        assert ca.name == exported_ca_name()
        assert (ca_volume, str(ca.parent), True) in volume_mounts(agent), f"{name}: mount {ca_volume} read-only at {ca.parent}"
        # the AWS config: profile AWS_PROFILE, the region `agentgate env` writes; transport B's line
        # names the mounted token file
        configs = refs(agent, "configs")
        (config,) = [k for k, path in configs.items() if path == env["AWS_CONFIG_FILE"]]
        text = c["configs"][config]["content"]
        parser = configparser.ConfigParser()
        parser.read_string(text)
        profile = parser[f"profile {env['AWS_PROFILE']}"]
        assert profile["region"] == printed_compose.profile["region"]
        assert set(profile) & {"credential_process", "aws_access_key_id"}
        assert f"credential_process = agentgate aws-credentials --token-file {token_path}" in text


# ----------------------------------------------------------------------------------- Kubernetes

def k8s() -> list[dict]:
    docs = []
    for f in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is not None:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{f.name}: {doc}"
                assert doc["metadata"].get("name"), f.name
                docs.append(doc)
    return docs


def k8s_get(kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    return [d for d in k8s() if d["kind"] == kind and name in (None, d["metadata"]["name"])
            and namespace in (None, d["metadata"].get("namespace"))]


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]


def readme_objects(home: Path) -> dict[tuple[str, str, str], set[str]]:
    """The Secrets and ConfigMaps deploy/README.md has you create with kubectl, and their keys, with
    AGENTGATE_HOME as a real `agentgate init` made it: (namespace, kind, name) -> keys."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "README.md").read_text())
    out = {}
    for line in text.splitlines():
        m = re.search(r"kubectl -n (\S+) create (secret generic|configmap) (\S+)(.*)", line)
        if not m:
            continue
        keys = set()
        for arg in shlex.split(m.group(4).replace("$AGENTGATE_HOME", str(home))):
            kind, _, value = arg.partition("=")
            if kind == "--from-literal":
                keys.add(value.split("=", 1)[0])
            elif kind == "--from-file":
                key, _, path = value.rpartition("=")
                p = Path(path)
                assert p.exists(), f"README: {arg}: no such file after `agentgate init`"
                keys |= {key} if key else ({f.name for f in p.iterdir() if f.is_file()} if p.is_dir() else {p.name})
        out[(m.group(1), "Secret" if m.group(2).startswith("secret") else "ConfigMap", m.group(3))] = keys
    return out


def object_keys(home: Path, namespace: str, kind: str, name: str) -> set[str]:
    defined = k8s_get(kind, name, namespace)
    if defined:
        return set(defined[0].get("data") or {}) | set(defined[0].get("stringData") or {})
    created = readme_objects(home)
    assert (namespace, kind, name) in created, f"{kind} {namespace}/{name}: neither in the manifests nor in README.md"
    return created[(namespace, kind, name)]


def test_kubernetes_manifests_parse_and_refer_to_each_other(home):
    namespaces = {d["metadata"]["name"] for d in k8s_get("Namespace")}
    assert namespaces
    workloads = k8s_get("Deployment") + k8s_get("Pod")
    assert k8s_get("Service") and k8s_get("Deployment") and k8s_get("Pod")
    for doc in k8s():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") in namespaces, doc["metadata"]["name"]
    for doc in workloads:
        ns, spec = doc["metadata"]["namespace"], pod_spec(doc)
        where = f"{doc['kind']} {ns}/{doc['metadata']['name']}"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounted = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert mounted == set(volumes), f"{where}: volumes and mounts differ"
        if sa := spec.get("serviceAccountName"):
            assert k8s_get("ServiceAccount", sa, ns), f"{where}: no ServiceAccount {sa}"
        assert spec["securityContext"]["runAsNonRoot"] is True
        sources = []
        for v in volumes.values():
            for kind in ("configMap", "secret"):
                if kind in v:
                    sources.append((kind, v[kind]))
            for src in v.get("projected", {}).get("sources", []):
                sources += [(kind, src[kind]) for kind in ("configMap", "secret") if kind in src]
        for kind, ref in sources:
            name = ref.get("name") or ref.get("secretName")
            keys = object_keys(home, ns, "ConfigMap" if kind == "configMap" else "Secret", name)
            for item in ref.get("items", []):
                assert item["key"] in keys, f"{where}: {name} has no key {item['key']}"
        for c in spec["containers"]:
            for e in c.get("env", []):
                for kind, ref in (e.get("valueFrom") or {}).items():
                    k = "Secret" if kind == "secretKeyRef" else "ConfigMap"
                    assert ref["key"] in object_keys(home, ns, k, ref["name"]), f"{where}: {e['name']}"
    (deployment,) = k8s_get("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (service,) = k8s_get("Service", namespace=deployment["metadata"]["namespace"])
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for c in pod_spec(deployment)["containers"] for p in c.get("ports", [])}
    for p in service["spec"]["ports"]:
        assert p["targetPort"] in ports or p["targetPort"] in ports.values()


def test_kubernetes_agents_may_reach_only_the_gateways_proxy_port_and_dns():
    (policy,) = k8s_get("NetworkPolicy", namespace="agents")
    spec = policy["spec"]
    assert spec["podSelector"] == {} and spec["policyTypes"] == ["Egress"]  # every agent pod, all egress
    (deployment,) = k8s_get("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    proxy = [r for r in spec["egress"] if any(p["port"] != 53 for p in r["ports"])]
    (rule,) = proxy
    (peer,) = rule["to"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": deployment["metadata"]["namespace"]}
    assert peer["podSelector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for c in pod_spec(deployment)["containers"] for p in c.get("ports", [])}
    assert [p["port"] for p in rule["ports"]] == [ports["proxy"]]
    others = [r for r in spec["egress"] if r is not rule]
    assert all(p["port"] == 53 for r in others for p in r["ports"])  # DNS, and nothing else


def gateway_container() -> tuple[dict, dict]:
    (deployment,) = k8s_get("Deployment")
    (container,) = pod_spec(deployment)["containers"]
    return pod_spec(deployment), container


def mount_path(container: dict, volume: str) -> str:
    (path,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    return path


def volume_of(spec: dict, kind: str, name: str) -> str:
    """The pod volume holding ConfigMap/Secret ``name``."""
    for v in spec["volumes"]:
        ref = v.get(kind) or {}
        if name in (ref.get("name"), ref.get("secretName")):
            return v["name"]
        for src in v.get("projected", {}).get("sources", []):
            if (src.get(kind) or {}).get("name") == name:
                return v["name"]
    raise AssertionError(f"no volume holds {kind} {name}")


def gateway_settings(tmp_path: Path, monkeypatch) -> tuple:
    spec, container = gateway_container()
    env = {e["name"]: e.get("value") for e in container["env"]}
    config_file = PurePosixPath(env["AGENTGATE_CONFIG"])
    (cm,) = [cm for cm in k8s_get("ConfigMap") if config_file.name in cm["data"]
             and mount_path(container, volume_of(spec, "configMap", cm["metadata"]["name"])) == str(config_file.parent)]
    toml = tmp_path / config_file.name
    toml.write_text(cm["data"][config_file.name])
    for name in list(os.environ):
        if name.startswith("AGENTGATE_"):
            monkeypatch.delenv(name)
    return load_settings(config=str(toml)), spec, container


def test_kubernetes_gateway_settings_point_at_its_mounts(home, tmp_path, monkeypatch):
    s, spec, container = gateway_settings(tmp_path, monkeypatch)
    assert container["command"][:2] == ["agentgate", "run"]
    assert " ".join(container["command"]) in " ".join(start_command())
    listen = container["command"][container["command"].index("--listen") + 1]
    assert int(listen.rsplit(":", 1)[1]) in [p["containerPort"] for p in container["ports"]]
    assert s.oidc_issuer.startswith("https://") and s.oidc_audience == "agentgate"
    ns = k8s_get("Deployment")[0]["metadata"]["namespace"]
    ca_files = {"mitmproxy-ca.pem", "mitmproxy-ca-cert.pem", "mitmproxy-dhparam.pem"}
    for setting, secret, needed in ((s.certs, "agentgate-ca", ca_files),
                                    (s.keys, "agentgate-keys", {"chain.key", "fingerprint.key", "admin.token"})):
        assert mount_path(container, volume_of(spec, "secret", secret)) == setting
        # mounted read-only: mitmproxy would otherwise write its dhparam file there
        assert needed <= object_keys(home, ns, "Secret", secret)
    env = {e["name"]: e for e in container["env"]}
    assert env["AGENTGATE_DB"]["valueFrom"]["secretKeyRef"]
    assert mount_path(container, volume_of(spec, "configMap", "agentgate-policies")) == s.policies


def test_kubernetes_policies_volume_is_a_policy_set_that_loads(home, tmp_path, monkeypatch):
    """The projected policies volume rebuilt from the ConfigMap README.md creates: the session
    policy a role names is at its path, and `agentgate policy check` accepts the set."""
    s, spec, container = gateway_settings(tmp_path, monkeypatch)
    ns = k8s_get("Deployment")[0]["metadata"]["namespace"]
    (volume,) = [v for v in spec["volumes"] if mount_path(container, v["name"]) == s.policies]
    files = {}
    policies = home / "policies"
    contents = {f.name: f for f in policies.iterdir() if f.is_file()}
    contents["session-readonly.json"] = policies / "session" / "readonly.json"
    for src in volume["projected"]["sources"]:
        name = src["configMap"]["name"]
        keys = object_keys(home, ns, "ConfigMap", name)
        items = src["configMap"].get("items") or [{"key": k, "path": k} for k in keys]
        for item in items:
            files[item["path"]] = contents[item["key"]]
    rebuilt = tmp_path / "mounted-policies"
    for path, source in files.items():
        (rebuilt / path).parent.mkdir(parents=True, exist_ok=True)
        (rebuilt / path).write_bytes(source.read_bytes())
    assert (rebuilt / "session" / "readonly.json").exists()
    cli(home, "policy", "check", str(rebuilt))


@pytest.fixture(scope="module")
def printed_k8s(home, tmp_path_factory) -> Printed:
    (service,) = k8s_get("Service")
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    return Printed(home, tmp_path_factory.mktemp("env-k8s"), f"{host}:{service['spec']['ports'][0]['port']}")


def container_env(container: dict) -> dict:
    """A container's env with Kubernetes' $(VAR) references to earlier variables expanded."""
    env = {}
    for e in container.get("env", []):
        assert "value" in e, f"{e['name']}: an agent's variable is a plain value"
        env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
    return env


def test_kubernetes_agent_pod_sets_exactly_what_agentgate_env_prints(home, printed_k8s, tmp_path, monkeypatch):
    s, _, _ = gateway_settings(tmp_path, monkeypatch)
    (gateway_image,) = {c["image"] for c in gateway_container()[0]["containers"]}
    assert compose()["services"]["gateway"]["image"] == gateway_image
    pods = k8s_get("Pod")
    for pod in pods:
        spec, ns = pod["spec"], pod["metadata"]["namespace"]
        assert spec.get("automountServiceAccountToken") is False
        for container in spec["containers"]:
            where = f"Pod {ns}/{pod['metadata']['name']}"
            env = container_env(container)
            check_agent_env(env, printed_k8s, where)
            # no token in the proxy URL: the token follows the refreshed file through credential_process
            printed = urlsplit(printed_k8s.values["HTTPS_PROXY"])
            assert env["HTTPS_PROXY"] == f"http://{printed.hostname}:{printed.port}"
            # the CA: the ConfigMap README.md creates from the gateway's certificate
            ca = PurePosixPath(env["AWS_CA_BUNDLE"])
            ca_volume = volume_of(spec, "configMap", "agentgate-ca")
            assert mount_path(container, ca_volume) == str(ca.parent)
            assert ca.name in object_keys(home, ns, "ConfigMap", "agentgate-ca")
            # the projected service-account token, for the gateway's audience
            (token_volume,) = [v for v in spec["volumes"] if "projected" in v
                               and any("serviceAccountToken" in src for src in v["projected"]["sources"])]
            (sat,) = [src["serviceAccountToken"] for src in token_volume["projected"]["sources"]]
            assert sat["audience"] == s.oidc_audience == "agentgate"
            token_path = f"{mount_path(container, token_volume['name'])}/{sat['path']}"
            # the AWS config: profile, region and credential_process as `agentgate env` writes them,
            # with the command found on PATH and the projected token file
            config = PurePosixPath(env["AWS_CONFIG_FILE"])
            (cm,) = [cm for cm in k8s_get("ConfigMap", namespace=ns) if config.name in cm.get("data", {})
                     and mount_path(container, volume_of(spec, "configMap", cm["metadata"]["name"])) == str(config.parent)]
            parser = configparser.ConfigParser()
            parser.read_string(cm["data"][config.name])
            profile = parser[f"profile {env['AWS_PROFILE']}"]
            assert profile["region"] == printed_k8s.profile["region"]
            want = shlex.split(printed_k8s.profile["credential_process"])
            got = shlex.split(profile["credential_process"])
            assert Path(want[0]).name == got[0] == "agentgate"
            assert got[1:] == [*want[1:-1], token_path]
            assert container["image"] == gateway_image, "the example agent's image must have the agentgate command"


# ------------------------------------------- the agents' configurations against a real gateway

def on_loopback(env: dict, gateway, *, proxy: str, config_text: str, tmp_path: Path) -> dict:
    """An agent's environment moved from its container onto this machine: the proxy URL to the
    loopback gateway, the CA and AWS config paths to local files, and the HOME every container has."""
    config = tmp_path / "aws-config"
    config.write_text(config_text)
    local = {**env, "HTTPS_PROXY": proxy, "https_proxy": proxy, "AWS_CONFIG_FILE": str(config)}
    local.update({v: str(gateway.ca_file) for v in CA_VARS})
    home = tmp_path / "agent-home"
    home.mkdir()
    return {**local, "HOME": str(home)}


WHO_AM_I = "import boto3, json; print(json.dumps(boto3.client('sts').get_caller_identity()['Arn']))"


def test_compose_agent_configuration_reaches_a_gateway_without_the_agentgate_command(gateway, issuer, tmp_path):
    c = compose()
    (agent,) = compose_agents().values()
    token = issuer.mint("compose-agent")
    (token_var,) = compose_vars(agent["environment"]["HTTPS_PROXY"])
    proxy = urlsplit(interpolate(agent["environment"]["HTTPS_PROXY"], {token_var: token}))
    proxy = proxy._replace(netloc=f"{proxy.username}:{proxy.password}@127.0.0.1:{gateway.port}").geturl()
    (config,) = [k for k, p in refs(agent, "configs").items() if p == agent["environment"]["AWS_CONFIG_FILE"]]
    env = on_loopback(agent["environment"], gateway, proxy=proxy, config_text=c["configs"][config]["content"],
                      tmp_path=tmp_path)
    env["PATH"] = "/usr/bin:/bin"  # no agentgate command
    p = run_agent(env, WHO_AM_I)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout).endswith("/compose-agent")


def test_kubernetes_agent_configuration_reaches_a_gateway_through_credential_process(gateway, issuer, tmp_path):
    (pod,) = k8s_get("Pod")
    (container,) = pod["spec"]["containers"]
    env = container_env(container)
    token_file = tmp_path / "projected-token"
    token_file.write_text(issuer.mint("system:serviceaccount:agents:example-agent"))
    config = PurePosixPath(env["AWS_CONFIG_FILE"])
    (cm,) = [cm for cm in k8s_get("ConfigMap", namespace=pod["metadata"]["namespace"]) if config.name in cm.get("data", {})]
    text = re.sub(r"--token-file \S+", f"--token-file {token_file}", cm["data"][config.name])
    assert urlsplit(env["HTTPS_PROXY"]).password is None
    local = on_loopback(env, gateway, proxy=f"http://127.0.0.1:{gateway.port}", config_text=text, tmp_path=tmp_path)
    local["PATH"] = f"{BIN}:/usr/bin:/bin"  # the agentgate command, as in the agent's image
    p = run_agent(local, WHO_AM_I)
    assert p.returncode == 0, p.stderr
    # the service account's subject has characters a session name cannot hold: readable, with its digest
    assert re.search(r"/agent-role/system-serviceaccount-agents-example-agent-[a-z2-7]{12}$", json.loads(p.stdout))
