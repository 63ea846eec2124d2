"""ops/ cannot run here (no Docker engine, no cluster), so these tests hold its files to the
code: every eventbatch command parses with the real command line, every EVENTBATCH_* name is a
real setting, the probes hit real routes, and the deployment has the shape ops/README.md says."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from eventbatch.api.app import create_app
from eventbatch.cli import _parser
from eventbatch.config import SETTING_NAMES, load_settings

OPS = Path(__file__).resolve().parents[2] / "ops"


def parses(argv: list[str]) -> None:
    try:
        _parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`eventbatch {' '.join(argv)}` does not parse (exit {exc.code})") from None


def routes() -> set[str]:
    app = create_app(load_settings({}), pool=object())  # the pool is only used once the app starts
    return {r.canonical for r in app.router.resources()}


def dockerfile() -> dict[str, list[str]]:
    """Instruction → its arguments, one entry per occurrence, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (OPS / "Dockerfile").read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def compose() -> dict:
    return yaml.safe_load((OPS / "compose.yaml").read_text())


def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted((OPS / "k8s").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def user_of(url: str) -> str:
    return urlsplit(url).username


def eventbatch_services(c: dict) -> dict[str, dict]:
    return {name: s for name, s in c["services"].items() if str(s.get("image", "")).startswith("eventbatch")}


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def eventbatch_argv(container: dict) -> list[str]:
    """What a container runs, as arguments of `eventbatch` (the image's entrypoint)."""
    command = container.get("command")
    if command:
        assert command[0] == "eventbatch", command
        return command[1:] + container.get("args", [])
    return container["args"]


# --- Dockerfile --------------------------------------------------------------------------------

def test_dockerfile():
    d = dockerfile()
    assert d["FROM"] == ["python:3.11-slim"]
    assert [json.loads(x) for x in d["ENTRYPOINT"]] == [["eventbatch"]]
    cmd = json.loads(d["CMD"][-1])
    assert cmd == ["serve", "--host", "0.0.0.0"]
    parses(cmd)
    user = d["USER"][-1].split(":")[0]
    assert user not in ("root", "0")
    assert any("pip install" in r for r in d["RUN"])
    # the wheel is built from migrations/ too (it ships them as eventbatch.migrations)
    assert any(r.split()[0] == "migrations" for r in d["COPY"])


# --- compose -----------------------------------------------------------------------------------

def test_compose_has_postgres_migrate_api_two_workers_and_the_mock():
    c = compose()
    services = c["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    ours = eventbatch_services(c)
    by_role: dict[str, list[tuple[str, dict]]] = {}
    for name, s in ours.items():
        parses(s["command"])
        by_role.setdefault(s["command"][0], []).append((name, s))
    assert set(by_role) == {"migrate", "api", "worker", "mock-upstream"}

    [(_, migrate)] = by_role["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"

    [(_, api)] = by_role["api"]
    assert api["command"] == ["api", "--host", "0.0.0.0", "--port", "8080"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "8080:8080" in api["ports"]
    probe = " ".join(api["healthcheck"]["test"])
    path = re.search(r"http://127\.0\.0\.1:8080(/[a-z]+)", probe).group(1)
    assert path in routes()

    workers = sum(s.get("deploy", {}).get("replicas", 1) for _, s in by_role["worker"])
    assert workers == 2

    [(mock_name, mock)] = by_role["mock-upstream"]
    assert mock["command"] == ["mock-upstream", "--host", "0.0.0.0", "--port", "8081"]
    for name, s in ours.items():
        env = s["environment"]
        assert env["EVENTBATCH_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["EVENTBATCH_DATABASE_URL"], name
        assert env["EVENTBATCH_UPSTREAM_URL"] == f"http://{mock_name}:8081/v1", name
        # least privilege (SPEC §14): only migrate has the owner's URL
        assert user_of(env["EVENTBATCH_DATABASE_URL"]) == "eventbatch_app", name
        assert ("EVENTBATCH_MIGRATION_DATABASE_URL" in env) == (name == "migrate"), name
    pg = services["postgres"]
    owner = urlsplit(migrate["environment"]["EVENTBATCH_MIGRATION_DATABASE_URL"])
    assert (owner.username, owner.password) == (pg["environment"]["POSTGRES_USER"],
                                                pg["environment"]["POSTGRES_PASSWORD"])
    # the app role exists before migrate runs: the image's init scripts create it, password and all
    [init] = [v.split(":")[0] for v in pg["volumes"] if "/docker-entrypoint-initdb.d/" in v]
    app = urlsplit(api["environment"]["EVENTBATCH_DATABASE_URL"])
    roles = (OPS / init).read_text()
    assert f"CREATE ROLE {app.username} LOGIN PASSWORD '{app.password}'" in roles


# --- Kubernetes --------------------------------------------------------------------------------

def test_k8s_manifests():
    docs = k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert all("namespace" not in d["metadata"] for d in docs)

    [config] = [d for d in docs if d["kind"] == "ConfigMap"]
    assert set(config["data"]) <= set(SETTING_NAMES)
    assert all(isinstance(v, str) for v in config["data"].values())  # ConfigMap values are strings
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    secret, owner_secret = secrets["eventbatch-secrets"], secrets["eventbatch-migration-secrets"]
    assert set(secrets) == {"eventbatch-secrets", "eventbatch-migration-secrets"}
    assert set(secret["stringData"]) == {"EVENTBATCH_DATABASE_URL", "EVENTBATCH_UPSTREAM_API_KEY"}
    assert set(owner_secret["stringData"]) == {"EVENTBATCH_MIGRATION_DATABASE_URL"}
    assert user_of(secret["stringData"]["EVENTBATCH_DATABASE_URL"]) == "eventbatch_app"
    assert user_of(owner_secret["stringData"]["EVENTBATCH_MIGRATION_DATABASE_URL"]) != "eventbatch_app"
    for name in ("EVENTBATCH_DATABASE_URL", "EVENTBATCH_UPSTREAM_API_KEY", "EVENTBATCH_MIGRATION_DATABASE_URL"):
        assert name not in config["data"]

    workloads = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("Deployment", "Job")}
    roles = {}
    for (kind, name), d in workloads.items():
        [c] = containers(d)
        argv = eventbatch_argv(c)
        parses(argv)
        roles[argv[0]] = (kind, d, c)
        refs = {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in c["envFrom"]}
        # the schema owner's URL reaches the migrate Job only (SPEC §14)
        owner = {owner_secret["metadata"]["name"]} if argv[0] == "migrate" else set()
        assert refs == {config["metadata"]["name"], secret["metadata"]["name"], *owner}, name
        if kind == "Deployment":
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert d["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    assert set(roles) == {"migrate", "api", "worker"}
    assert roles["migrate"][0] == "Job" and roles["api"][0] == roles["worker"][0] == "Deployment"

    _, api, c = roles["api"]
    argv = eventbatch_argv(c)
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    port = int(argv[argv.index("--port") + 1])
    [http] = c["ports"]
    assert http["containerPort"] == port
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    known = routes()
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] in known, probe
        assert get["port"] in (port, http["name"]), probe

    [service] = [d for d in docs if d["kind"] == "Service"]
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in (port, http["name"])
    assert ("Deployment", "eventbatch-worker") in kinds

    kustomization = yaml.safe_load((OPS / "k8s" / "kustomization.yaml").read_text())
    files = {p.name for p in (OPS / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


# --- everything in ops/ ------------------------------------------------------------------------

def ops_files() -> list[Path]:
    return [p for p in OPS.rglob("*") if p.is_file()]


def test_every_setting_name_in_ops_is_a_real_setting():
    used = {}
    for path in ops_files():
        for name in re.findall(r"EVENTBATCH_[A-Z0-9_]+", path.read_text()):
            used.setdefault(name, path.relative_to(OPS))
    unknown = {n: str(p) for n, p in used.items() if n not in SETTING_NAMES}
    assert not unknown, f"not in eventbatch.config.SETTING_NAMES: {unknown}"
    assert {"EVENTBATCH_DATABASE_URL", "EVENTBATCH_UPSTREAM_URL"} <= set(used)


def readme_commands() -> list[list[str]]:
    """`eventbatch …` commands in the README's code spans and code blocks."""
    text = (OPS / "README.md").read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    commands = []
    for snippet in spans + [line for b in blocks for line in b.splitlines()]:
        m = re.search(r"(?:^|\s)eventbatch\s+(.+)$", snippet)
        if m:
            commands.append(shlex.split(m.group(1)))
    return commands


def test_readme_commands_parse():
    commands = readme_commands()
    assert len(commands) >= 8
    for argv in commands:
        parses(argv)


@pytest.mark.parametrize("argv", [["serve", "--hots", "x"], ["nope"]])
def test_the_parse_check_catches_a_bad_command(argv):
    with pytest.raises(AssertionError):
        parses(argv)
