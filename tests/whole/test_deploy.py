"""deploy/: the compose file, HAProxy's configuration and the Kubernetes manifests agree with
the dealer's settings, and the HAProxy of tests/support/haproxy.py routes by ``/readyz``.

No container engine and no cluster here: the manifests are checked against the Kubernetes
schemas offline (kubernetes-validate ships them), HAProxy's configuration by ``haproxy -c``,
and the rest by reading the files: probes, ports, env values (each parsed as the dealer
would), shutdown timings and label selectors.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.support.haproxy import HAProxy, haproxy_or_fail, needs_haproxy
from tokendealer.config import SETTING_NAMES, Settings, duration_seconds
from tokendealer.keys.store import check_key_store_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
PREFIX = "TOKENDEALER_"
# What a dealer's killer must wait beyond drain + grace: a worker still busy 5 s past the
# grace is killed by serve itself (README "Shutdown and restarts").
KILL_MARGIN = 5
EVERY_ADDRESS = "0.0.0.0"  # noqa: S104 (compared with, never bound)


# -- reading the files ---------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def env_example() -> dict[str, str]:
    """deploy/.env.example: what compose.yaml's required variables are set to."""
    pairs = (
        line.split("=", 1)
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {name.strip(): value.strip() for name, value in pairs}


_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}``; a required one
    must be in ``variables`` (.env.example), or the try-out recipe would stop on it."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3)
        if name in variables:
            return variables[name]
        assert "?" not in operator, f"${{{name}}} is required but not in deploy/.env.example"
        return argument if "-" in operator else ""

    return _VARIABLE.sub(one, value)


def dealer_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    return {name: spec for name, spec in services.items() if "build" in spec}


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    variables = env_example()
    return {
        name: interpolate(str(value), variables) for name, value in service["environment"].items()
    }


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in deploy/kubernetes/, by kind (one of each)."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document["kind"] != "Kustomization":
                assert document["kind"] not in objects, f"two {document['kind']}s"
                objects[document["kind"]] = document
    return objects


def container() -> dict[str, Any]:
    (only,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def kubernetes_env() -> dict[str, str]:
    """The container's environment, Secret references resolved to secret.yaml's placeholders."""
    secret = manifests()["Secret"]
    env = {}
    for item in container()["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"], item
        if ref["key"] in secret["stringData"]:
            env[item["name"]] = secret["stringData"][ref["key"]]
        else:
            assert ref.get("optional"), f"{ref['key']} is not in secret.yaml and not optional"
    return env


def haproxy_sections() -> dict[str, list[str]]:
    """deploy/haproxy.cfg as ``{"backend dealers": [its lines], ...}``, comments dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in (DEPLOY / "haproxy.cfg").read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(" ".join(line.split()), [])
        else:
            current.append(" ".join(line.split()))
    return sections


def settings_of(env: dict[str, str]) -> Settings:
    """The dealer's settings from ``env``, checked as ``serve`` checks them before it starts."""
    settings = Settings.from_env(env)
    check_key_store_settings(settings)  # the database store has its passphrase
    return settings


def port_number(port: int | str) -> int:
    """A probe's or the Service's port: a number, or the name of a container port."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container()["ports"] if p.get("name") == port]
    return number


# -- compose ---------------------------------------------------------------------------------


def test_compose_runs_two_dealers_built_from_the_dockerfile_with_one_environment() -> None:
    dealers = dealer_services()
    assert len(dealers) == 2, sorted(dealers)
    for spec in dealers.values():
        context = (DEPLOY / spec["build"]["context"]).resolve()
        assert (
            context == ROOT and (context / spec["build"].get("dockerfile", "Dockerfile")).is_file()
        )
        assert not spec.get("volumes"), "no keys volume: the keys are in the database"
    first, second = dealers.values()
    assert compose_env(first) == compose_env(second)


def test_compose_env_is_every_setting_known_and_valid() -> None:
    services = compose()["services"]
    for spec in dealer_services().values():
        env = compose_env(spec)
        assert set(env) <= SETTING_NAMES, set(env) - SETTING_NAMES
        settings = settings_of(env)
        assert settings.key_store == "database" and settings.rotate_every == 7 * 86400
        assert not any("KEYS_DIR" in name for name in env)
        assert settings.host == EVERY_ADDRESS
        assert settings.database_url.startswith("postgresql+asyncpg://")
        # Every replica reaches the same PostgreSQL and Redis: services of this file.
        assert urlsplit(settings.database_url).hostname in services
        assert urlsplit(settings.rate_limit_url).scheme == "redis"
        assert urlsplit(settings.rate_limit_url).hostname in services


def test_compose_secrets_are_required_variables_never_literals() -> None:
    environment = next(iter(dealer_services().values()))["environment"]
    for name in ("TOKENDEALER_KEY_PASSPHRASE", "TOKENDEALER_ISSUER"):
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", environment[name]), environment[name]
    assert "${POSTGRES_PASSWORD:?" in environment["TOKENDEALER_DATABASE_URL"]
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()
    assert "change-me" in env_example()["TOKENDEALER_KEY_PASSPHRASE"]


def test_the_env_file_stays_out_of_the_image_build_context() -> None:
    """compose builds from the repository root: deploy/.env, holding the passphrase,
    must not be sent to the builder."""
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"deploy", "deploy/", "deploy/.env", "**/.env", ".env"} & set(ignored)


def test_compose_stops_a_dealer_no_sooner_than_drain_and_grace() -> None:
    for spec in dealer_services().values():
        settings = settings_of(compose_env(spec))
        grace = duration_seconds(spec["stop_grace_period"])
        assert grace >= settings.drain_delay + settings.shutdown_grace + KILL_MARGIN


def test_compose_dealers_write_only_to_tmp() -> None:
    for spec in dealer_services().values():
        assert spec["read_only"] is True and spec["tmpfs"] == ["/tmp"]


def test_compose_trusts_only_haproxy_for_forwarded_addresses() -> None:
    data = compose()
    address = data["services"]["haproxy"]["networks"]["default"]["ipv4_address"]
    (subnet,) = [ip_network(c["subnet"]) for c in data["networks"]["default"]["ipam"]["config"]]
    assert ip_address(address) in subnet
    for spec in dealer_services().values():
        proxies = settings_of(compose_env(spec)).trusted_proxies
        assert [str(p) for p in proxies] == [f"{address}/32"]
    assert "option forwardfor" in haproxy_sections()["frontend tokens"]


# -- HAProxy's configuration -------------------------------------------------------------------


def test_haproxy_polls_readyz_of_both_dealers_on_their_port() -> None:
    backend = haproxy_sections()["backend dealers"]
    assert "option httpchk GET /readyz" in backend
    assert "http-check expect status 200" in backend
    servers = [line.split()[1:3] for line in backend if line.startswith("server ")]
    checked = [(name, target) for name, target in servers if not name.endswith("-fallback")]
    dealers = dealer_services()
    ports = {settings_of(compose_env(spec)).port for spec in dealers.values()}
    assert sorted(checked) == sorted((name, f"{name}:{port}") for name in dealers for port in ports)
    # Out of the rotation within the drain delay: every check interval * fall.
    (defaults,) = [line.split() for line in backend if line.startswith("default-server")]
    assert "check" in defaults
    inter = duration_seconds(defaults[defaults.index("inter") + 1])
    fall = int(defaults[defaults.index("fall") + 1])
    for spec in dealers.values():
        assert inter * fall < settings_of(compose_env(spec)).drain_delay


def test_haproxy_listens_where_compose_publishes_it() -> None:
    (bind,) = [line for line in haproxy_sections()["frontend tokens"] if line.startswith("bind ")]
    port = bind.split(":")[-1]
    assert f"8080:{port}" in compose()["services"]["haproxy"]["ports"]
    mounts = compose()["services"]["haproxy"]["volumes"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in mounts


@needs_haproxy
def test_haproxy_accepts_the_configuration() -> None:
    """``haproxy -c``: valid; the only warnings are the compose host names, which do not
    resolve outside compose (``init-addr none`` lets HAProxy start without them)."""
    result = subprocess.run(
        [haproxy_or_fail(), "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if "[WARNING]" in line]
    assert all("could not resolve address" in line for line in warnings), warnings


# -- Kubernetes --------------------------------------------------------------------------------


def test_manifests_pass_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (test extra)"
    )
    for kind, document in manifests().items():
        try:
            kubernetes_validate.validate(document, "1.30.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}: {exc.message} at {list(exc.path)}")


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_deployment_env_is_every_setting_known_and_valid() -> None:
    env = kubernetes_env()
    assert set(env) <= SETTING_NAMES, set(env) - SETTING_NAMES
    settings = settings_of(env)
    assert settings.key_store == "database" and settings.rotate_every == 7 * 86400
    assert settings.host == EVERY_ADDRESS and settings.database_url.startswith("postgresql+asyncpg")
    # The settings the shutdown depends on are written out, not left to defaults.
    assert {"TOKENDEALER_DRAIN_DELAY", "TOKENDEALER_SHUTDOWN_GRACE", "TOKENDEALER_PORT"} <= set(env)


def test_secret_holds_marked_placeholders_and_no_usable_database() -> None:
    secret = manifests()["Secret"]["stringData"]
    assert {"TOKENDEALER_DATABASE_URL", "TOKENDEALER_KEY_PASSPHRASE"} <= set(secret)
    assert all("REPLACE-ME" in value for value in secret.values())
    # A forgotten placeholder fails the start-up: .invalid never resolves (RFC 6761).
    assert urlsplit(secret["TOKENDEALER_DATABASE_URL"]).hostname.endswith(".invalid")
    secret_refs = {
        item["name"] for item in container()["env"] if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert {"TOKENDEALER_DATABASE_URL", "TOKENDEALER_KEY_PASSPHRASE"} <= secret_refs


def test_probes_and_service_reach_the_port_the_dealer_listens_on() -> None:
    port = settings_of(kubernetes_env()).port
    ports = [p["containerPort"] for p in container()["ports"]]
    assert ports == [port]
    probes = {
        kind: container()[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert all(port_number(probe["port"]) == port for probe in probes.values())
    (service_port,) = manifests()["Service"]["spec"]["ports"]
    assert port_number(service_port["targetPort"]) == port


def test_readiness_notices_a_503_within_the_drain_delay() -> None:
    readiness = container()["readinessProbe"]
    settings = settings_of(kubernetes_env())
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= settings.drain_delay


def test_termination_grace_covers_drain_and_shutdown_grace() -> None:
    settings = settings_of(kubernetes_env())
    spec = manifests()["Deployment"]["spec"]["template"]["spec"]
    needed = settings.drain_delay + settings.shutdown_grace + KILL_MARGIN
    assert spec["terminationGracePeriodSeconds"] >= needed


def test_replicas_selectors_and_disruption_budget_agree() -> None:
    objects = manifests()
    deployment = objects["Deployment"]["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["replicas"] >= 2
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= labels.items()

    assert selects(deployment["selector"]["matchLabels"])
    assert selects(objects["Service"]["spec"]["selector"])
    budget = objects["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"] == deployment["selector"]["matchLabels"]
    assert 1 <= budget["minAvailable"] < deployment["replicas"]  # evictions still possible


def test_service_links_cannot_inject_tokendealer_variables() -> None:
    """Kubernetes gives every pod ``<SERVICE>_PORT=tcp://...`` and the like for each
    Service; a Service named tokendealer would set TOKENDEALER_PORT to a URL."""
    name = manifests()["Service"]["metadata"]["name"].upper().replace("-", "_")
    spec = manifests()["Deployment"]["spec"]["template"]["spec"]
    if name.startswith(PREFIX.rstrip("_")):
        assert spec["enableServiceLinks"] is False


def test_runs_as_the_image_user_with_a_read_only_root_and_tmp_only() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    uid = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert uid and pod["securityContext"]["runAsUser"] == int(uid.group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    (mount,) = container()["volumeMounts"]
    (volume,) = pod["volumes"]
    assert mount["mountPath"] == "/tmp" and mount["name"] == volume["name"]
    assert "emptyDir" in volume  # no keys volume, no claim


# -- deploy/README.md ----------------------------------------------------------------------------


def test_readme_links_resolve() -> None:
    text = (DEPLOY / "README.md").read_text()
    links = re.findall(r"\]\((?!https?://)([^)]+)\)", text)
    assert links
    for link in links:
        target, _, anchor = link.partition("#")
        path = (DEPLOY / target).resolve() if target else DEPLOY / "README.md"
        assert path.exists(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, link


# -- the HAProxy of the fleet tests ------------------------------------------------------------


class Backend(ThreadingHTTPServer):
    """A stand-in dealer: ``/readyz`` answers ``ready``, anything else its name."""

    daemon_threads = True

    def __init__(self, name: str, ready: int) -> None:
        self.name, self.ready = name, ready
        super().__init__(("127.0.0.1", 0), BackendHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request: object, client_address: object) -> None:
        """HAProxy's checks close as soon as they read the status line: not an error."""


class BackendHandler(BaseHTTPRequestHandler):
    server: Backend

    def do_GET(self) -> None:
        status = self.server.ready if self.path == "/readyz" else 200
        body = self.server.name.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def backends() -> Iterator[tuple[Backend, Backend]]:
    pair = (Backend("ready", 200), Backend("unready", 503))
    threads = [threading.Thread(target=b.serve_forever, daemon=True) for b in pair]
    for thread in threads:
        thread.start()
    yield pair
    for backend in pair:
        backend.shutdown()
        backend.server_close()


def answers(url: str, count: int = 12) -> list[str]:
    with httpx.Client(timeout=5) as client:
        return [client.get(f"{url}/").text for _ in range(count)]


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@needs_haproxy
def test_haproxy_routes_only_to_ready_dealers_and_follows_readyz(
    backends: tuple[Backend, Backend],
) -> None:
    ready, unready = backends
    with HAProxy([ready.port, unready.port], inter=0.1) as lb:
        assert lb.backends_up() == ["dealer1"]
        assert set(answers(lb.url)) == {"ready"}

        unready.ready = 200  # back in after one good check
        wait_for(lambda: lb.backends_up() == ["dealer1", "dealer2"])
        assert set(answers(lb.url)) == {"ready", "unready"}

        ready.ready = 503  # draining: out after one failed check
        wait_for(lambda: lb.backends_up() == ["dealer2"])
        assert set(answers(lb.url)) == {"unready"}


@needs_haproxy
def test_haproxy_falls_back_to_every_dealer_when_none_is_ready(
    backends: tuple[Backend, Backend],
) -> None:
    """As deploy/haproxy.cfg does: with every /readyz 503 (the database down), requests
    still reach the dealers, which serve the JWKS from memory; without it, HAProxy's 503."""
    ready, unready = backends
    ready.ready = 503
    with HAProxy([ready.port, unready.port], inter=0.1, fallback=True, wait_up=0) as lb:
        assert lb.backends_up() == []
        assert set(answers(lb.url)) == {"ready", "unready"}
    with (
        HAProxy([ready.port, unready.port], inter=0.1, wait_up=0) as lb,
        httpx.Client(timeout=5) as client,
    ):
        assert client.get(f"{lb.url}/").status_code == 503
