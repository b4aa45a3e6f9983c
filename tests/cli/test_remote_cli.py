"""The command line both ways: on this host's stores, and through a dealer's admin API.

``tokendealer --url URL ...`` (or ``TOKENDEALER_URL``) runs ``clients``, ``keys`` and
``audit`` with the same output, ``--json`` shapes and exit codes as the local mode;
only the audit record's actor differs. Real dealers (``tokendealer serve``), real CLI
processes; the remote side has no database or key store of its own.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TOKENDEALER, DealerServer, dealer_env, free_port
from tests.serve.test_startup import self_signed
from tests.support.client_keys import ec_key
from tokendealer.client import ClientCredentials

Run = Callable[..., subprocess.CompletedProcess[str]]
UNKNOWN = "0" * 24
TRACEBACK = "Traceback"


def runner(env: dict[str, str], *prefix: str) -> Run:
    """``tokendealer *prefix *args`` in a subprocess; ``status``: the exit status it must have."""

    def run(*args: str, status: int | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*TOKENDEALER, *prefix, *args], env=env, capture_output=True, text=True, timeout=60
        )
        if status is not None:
            assert result.returncode == status, (args, result.stdout, result.stderr)
        return result

    return run


def admin_client(run: Run, issuer: str, *args: str, scope: str = "tokendealer:admin") -> Any:
    """The README's bootstrap: a client whose tokens are for the dealer itself."""
    created = run(
        "clients", "create", "--name", "ops", "--scope", scope, "--audience", issuer, *args,
        "--json", status=0,
    )  # fmt: skip
    return json.loads(created.stdout)


def remote_env(tmp_path: Path, dealer: DealerServer, **admin: str) -> dict[str, str]:
    """An operator's host: no database, no key set, only the dealer's URL and credentials."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = dealer_env(elsewhere, f"sqlite+aiosqlite:///{elsewhere / 'none.db'}", dealer.port)
    env.update(admin)
    return env


def secret_of(client: dict[str, Any]) -> dict[str, str]:
    return {
        "TOKENDEALER_ADMIN_CLIENT_ID": client["client_id"],
        "TOKENDEALER_ADMIN_CLIENT_SECRET": client["client_secret"],
    }


def remote(dealer: DealerServer, client: dict[str, Any], tmp_path: Path) -> Run:
    """``tokendealer --url <dealer>`` as the admin client ``client`` (its secret)."""
    return runner(remote_env(tmp_path, dealer, **secret_of(client)), "--url", dealer.url)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    return result.stderr.strip()


@dataclass
class Sides:
    """The same start both ways: an initialised dealer with the ``ops`` admin client."""

    local: Run
    remote: Run
    dealer: DealerServer
    ops: dict[str, Any]


@pytest.fixture
def ops(dealer: DealerServer) -> dict[str, Any]:
    """The admin client of the running dealer, registered on its host."""
    return admin_client(runner(dealer.env), dealer.url)


@pytest.fixture
def sides(dealer: DealerServer, ops: dict[str, Any], tmp_path: Path) -> Sides:
    there = remote(dealer, ops, tmp_path)
    here = tmp_path / "here"  # stores of its own; the same issuer, so the same audiences
    here.mkdir()
    local = runner(dealer_env(here, f"sqlite+aiosqlite:///{here / 'td.db'}", dealer.port))
    local("init", status=0)
    admin_client(local, dealer.url)
    return Sides(local, there, dealer, ops)


# -- the same sequence both ways ----------------------------------------------------------------


Step = tuple[tuple[str, ...], int, str, str]  # the command, its status, stdout, stderr


def sequence(run: Run, as_json: bool) -> list[Step]:
    """The issue's sequence, with a refused change and an unknown kid on the way."""
    steps: list[Step] = []

    def step(*args: str) -> subprocess.CompletedProcess[str]:
        result = run(*args, *(["--json"] if as_json else []))
        steps.append((args, result.returncode, result.stdout, result.stderr))
        return result

    created = step(
        "clients", "create", "--name", "svc", "--scope", "read write", "--audience", "jeeves",
        "--ttl", "300",
    )  # fmt: skip
    client_id = json.loads(created.stdout)["client_id"] if as_json else created.stdout.split()[1]
    step("clients", "list")
    step("clients", "show", client_id)
    step("clients", "update", client_id, "--name", "renamed", "--audience", "a", "--audience", "b")
    step("clients", "disable", client_id)
    step("clients", "enable", client_id)
    step("clients", "rotate-secret", client_id, "--grace", "60", "--revoke-tokens")
    step("clients", "disable", UNKNOWN)  # refused, and recorded so
    step("clients", "delete", client_id)
    step("keys", "list")
    step("keys", "rotate")
    step("keys", "prune")
    keys = json.loads(run("keys", "list", "--json", status=0).stdout)
    step("keys", "revoke", next(key["kid"] for key in keys if key["state"] == "retired"))
    step("keys", "revoke", "no-such-kid")
    step("audit")
    return steps


TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?( *)")
# Client ids (24 hex digits); kids (RFC 7638 thumbprints) and secrets (43 base64url).
ID = re.compile(r"(?<![\w-])(?:[0-9a-f]{24}|[\w-]{43})(?![\w-])")
ACTOR = re.compile(r"\b(?:cli|client):\S+")


def normalised(steps: list[Step]) -> list[tuple[tuple[str, ...], int, str, str]]:
    """Ids, secrets and kids as ``<n>`` in order of appearance, times as ``<time>``, the
    audit's actors as ``<actor>``, a warning's seconds as ``N``: what is left must match."""
    names: dict[str, str] = {}

    def name(match: re.Match[str]) -> str:
        return names.setdefault(match.group(0), f"<{len(names)}>")

    def clean(text: str) -> str:
        try:
            data = json.loads(text)
        except ValueError:
            text = ACTOR.sub("<actor>", text)
        else:
            if isinstance(data, list):
                data = [{**d, "actor": "<actor>"} if "actor" in d else d for d in data]
            text = json.dumps(data, indent=2)
        text = TIME.sub(lambda m: "<time>" + (" " if m.group(1) else ""), text)
        text = re.sub(r"published only \d+ s ago", "published only N s ago", text)
        return ID.sub(name, text)

    return [
        (tuple(ID.sub(name, arg) for arg in args), status, clean(out), clean(err))
        for args, status, out, err in steps
    ]


def test_the_same_sequence_gives_the_same_output_both_ways(sides: Sides) -> None:
    def both_passes(run: Run) -> list[Step]:
        return sequence(run, as_json=False) + sequence(run, as_json=True)

    with ThreadPoolExecutor(2) as pool:  # two independent dealers' states: run at once
        here, there = pool.map(both_passes, [sides.local, sides.remote])

    assert normalised(there) == normalised(here)
    statuses = [status for _, status, _, _ in here]
    assert statuses.count(1) == 4 and set(statuses) == {0, 1}  # 2 refusals, 2 unknown kids
    refused = [step for step in there if step[1] == 1]
    assert refused[0][3] == f"error: no client with id '{UNKNOWN}'\n"
    assert refused[1][3] == "error: no key with kid 'no-such-kid' in the key set\n"
    assert all(TRACEBACK not in out + err for _, _, out, err in here + there)
    for _, _, out, err in there:  # the admin client's secret never shows
        assert sides.ops["client_secret"] not in out + err

    # Each change is in the audit record once, with who made it.
    local_events = json.loads(sides.local("audit", "--json", status=0).stdout)
    remote_events = json.loads(sides.remote("audit", "--json", status=0).stdout)
    one_pass = [
        ("keys.revoke", "refused"),  # the unknown kid
        ("keys.revoke", "done"),
        ("keys.rotate", "done"),
        ("clients.delete", "done"),
        ("clients.disable", "refused"),
        ("clients.rotate-secret", "done"),
        ("clients.enable", "done"),
        ("clients.disable", "done"),
        ("clients.update", "done"),
        ("clients.create", "done"),
    ]
    expected = [*one_pass, *one_pass, ("clients.create", "done")]  # ... after ops's creation
    for events in (local_events, remote_events):
        assert [(e["action"], e["outcome"]) for e in events] == expected
    cli = {
        "kind": "cli",
        "id": None,
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "source": None,
    }
    assert all(event["actor"] == cli for event in local_events)
    ops = {"kind": "client", "id": sides.ops["client_id"], "user": None, "host": None}
    assert [e["actor"] for e in remote_events[:-1]] == [{**ops, "source": "127.0.0.1"}] * 20
    assert remote_events[-1]["actor"] == cli  # the bootstrap, on the dealer's host
    assert remote_events[-1]["object"]["id"] == sides.ops["client_id"]
    assert "no client" in remote_events[4]["reason"]
    assert "no key with kid" in remote_events[0]["reason"]
    text = sides.remote("audit", "--limit", "1", status=0).stdout
    assert f"client:{sides.ops['client_id']}@127.0.0.1" in text


def test_clients_list_follows_the_next_links(
    dealer: DealerServer, ops: dict[str, Any], tmp_path: Path
) -> None:
    """More clients than one page of the API (100): the CLI asks for every page."""
    auth = ClientCredentials(
        f"{dealer.url}/oauth/token",
        ops["client_id"],
        ops["client_secret"],
        audience=dealer.url,
    )
    with httpx.Client(auth=auth, base_url=dealer.url, timeout=30) as http:
        for number in range(120):
            body = {"name": f"svc-{number}", "scope": "read", "audience": ["jeeves"]}
            assert http.post("/admin/clients", json=body).status_code == 201
        first = http.get("/admin/clients")
    assert len(first.json()) == 100 and 'rel="next"' in first.headers["Link"]

    listed = json.loads(remote(dealer, ops, tmp_path)("clients", "list", "--json", status=0).stdout)
    assert len(listed) == 121
    assert listed == json.loads(dealer.cli("clients", "list", "--json").stdout)
    text = remote(dealer, ops, tmp_path)("clients", "list", status=0).stdout.splitlines()
    assert text == dealer.cli("clients", "list").stdout.splitlines() and len(text) == 122


# -- what stays local, and the remote mode's own failures -----------------------------------------


@pytest.mark.parametrize(
    "command",
    [["keys", "rewrap"], ["keys", "import", "."], ["init"]],
    ids=["rewrap", "import", "init"],
)
def test_commands_on_the_stores_themselves_refuse_a_url(
    dealer: DealerServer, ops: dict[str, Any], tmp_path: Path, command: list[str]
) -> None:
    line = one_line(remote(dealer, ops, tmp_path)(*command, status=2))
    assert "itself" in line or "themselves" in line
    assert "without --url/TOKENDEALER_URL" in line


@pytest.mark.parametrize(
    "url", ["http://example.com", "http://10.0.0.5:5000", "ftp://127.0.0.1", "example.com"]
)
def test_a_url_that_would_send_the_secret_in_clear_is_refused(
    dealer: DealerServer, ops: dict[str, Any], tmp_path: Path, url: str
) -> None:
    env = remote_env(tmp_path, dealer, **secret_of(ops))
    line = one_line(runner(env, "--url", url)("clients", "list", status=2))
    assert "https" in line
    env["TOKENDEALER_URL"] = url
    line = one_line(runner(env)("clients", "list", status=2))
    assert line.startswith("error: TOKENDEALER_URL=") and "https" in line


def test_tokendealer_url_in_the_environment_is_remote_mode(
    dealer: DealerServer, ops: dict[str, Any], tmp_path: Path
) -> None:
    env = remote_env(tmp_path, dealer, **secret_of(ops))
    env["TOKENDEALER_URL"] = dealer.url
    listed = json.loads(runner(env)("clients", "list", "--json", status=0).stdout)
    assert [client["name"] for client in listed] == ["ops"]


def test_a_wrong_admin_secret_is_one_line(
    dealer: DealerServer, ops: dict[str, Any], tmp_path: Path
) -> None:
    wrong = "not-the-secret-" + "x" * 30
    env = remote_env(
        tmp_path,
        dealer,
        TOKENDEALER_ADMIN_CLIENT_ID=ops["client_id"],
        TOKENDEALER_ADMIN_CLIENT_SECRET=wrong,
    )
    result = runner(env, "--url", dealer.url)("clients", "list", status=1)
    line = one_line(result)
    assert "invalid_client" in line and ops["client_id"] in line
    assert wrong not in result.stdout + result.stderr and TRACEBACK not in result.stderr


@pytest.mark.parametrize(
    ("admin", "says"),
    [
        ({}, "TOKENDEALER_ADMIN_CLIENT_ID"),
        ({"TOKENDEALER_ADMIN_CLIENT_ID": "x"}, "TOKENDEALER_ADMIN_CLIENT_SECRET"),
        (
            {"TOKENDEALER_ADMIN_CLIENT_ID": "x", "TOKENDEALER_ADMIN_PRIVATE_KEY": "/no/such.pem"},
            "cannot read",
        ),
    ],
    ids=["no id", "no secret or key", "unreadable key"],
)
def test_missing_admin_credentials_are_a_usage_error(
    dealer: DealerServer, tmp_path: Path, admin: dict[str, str], says: str
) -> None:
    env = remote_env(tmp_path, dealer, **admin)
    assert says in one_line(runner(env, "--url", dealer.url)("keys", "list", status=2))


def test_an_unreachable_dealer_is_one_line(
    dealer: DealerServer, ops: dict[str, Any], tmp_path: Path
) -> None:
    env = remote_env(tmp_path, dealer, **secret_of(ops))
    url = f"https://127.0.0.1:{free_port()}"
    line = one_line(runner(env, "--url", url)("keys", "list", status=1))
    assert f"cannot reach the dealer at {url}" in line


def test_a_dealer_without_the_admin_api_says_so(
    dealer_factory: Any, sqlite_url: str, tmp_path: Path
) -> None:
    """TOKENDEALER_ADMIN_API=off: one line naming it, not a "no client with id" lookalike."""
    dealer = dealer_factory(sqlite_url, TOKENDEALER_ADMIN_API="off")
    dealer.start()
    run = remote(dealer, admin_client(runner(dealer.env), dealer.url), tmp_path)
    for command in (["clients", "list"], ["clients", "show", UNKNOWN], ["keys", "rotate"]):
        assert "TOKENDEALER_ADMIN_API" in one_line(run(*command, status=1))


def test_a_read_only_admin_client_reads_and_changes_nothing(
    dealer: DealerServer, ops: dict[str, Any], tmp_path: Path
) -> None:
    reader = admin_client(runner(dealer.env), dealer.url, scope="tokendealer:read")
    run = runner(remote_env(tmp_path, dealer, **secret_of(reader)), "--url", dealer.url)
    assert len(json.loads(run("clients", "list", "--json", status=0).stdout)) == 2
    run("keys", "list", status=0)
    run("audit", status=0)
    for change in (["clients", "create", "--name", "x", "--audience", "a"], ["keys", "rotate"]):
        line = one_line(run(*change, status=1))
        assert "insufficient_scope" in line and "tokendealer:admin" in line
    assert len(json.loads(dealer.cli("clients", "list", "--json").stdout)) == 2


def test_an_admin_client_with_a_private_key(dealer: DealerServer, tmp_path: Path) -> None:
    """private_key_jwt: TOKENDEALER_ADMIN_PRIVATE_KEY names the PEM file; no secret at all."""
    key = ec_key()
    jwks = tmp_path / "ops.jwks.json"
    jwks.write_text(json.dumps(key.jwks()))
    signer = admin_client(runner(dealer.env), dealer.url, "--jwks", str(jwks))
    pem = tmp_path / "ops.pem"
    pem.write_text(key.private_pem())
    env = remote_env(
        tmp_path,
        dealer,
        TOKENDEALER_ADMIN_CLIENT_ID=signer["client_id"],
        TOKENDEALER_ADMIN_PRIVATE_KEY=str(pem),
    )
    run = runner(env, "--url", dealer.url)
    created = json.loads(
        run("clients", "create", "--name", "by-key", "--audience", "a", "--json", status=0).stdout
    )
    newest = json.loads(run("audit", "--json", "--limit", "1", status=0).stdout)[0]
    assert newest["object"]["id"] == created["client_id"]
    assert newest["actor"]["id"] == signer["client_id"]
    # set-keys through the API: an update of the keys, the same audit action as locally
    keyed = run("clients", "set-keys", created["client_id"], "--jwks", str(jwks), "--json")
    assert json.loads(keyed.stdout)["token_endpoint_auth_method"] == "private_key_jwt"
    newest = json.loads(run("audit", "--json", "--limit", "1", status=0).stdout)[0]
    assert (newest["action"], newest["actor"]["id"]) == ("clients.set-keys", signer["client_id"])

    env["TOKENDEALER_ADMIN_CLIENT_SECRET"] = "both"
    assert "not both" in one_line(runner(env, "--url", dealer.url)("keys", "list", status=2))
    pem.write_text("not a key")
    del env["TOKENDEALER_ADMIN_CLIENT_SECRET"]
    line = one_line(runner(env, "--url", dealer.url)("keys", "list", status=2))
    assert "TOKENDEALER_ADMIN_PRIVATE_KEY" in line


# -- TLS: certificates are verified; TOKENDEALER_CA_BUNDLE names a private CA ----------------------


class TlsDealer(DealerServer):
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture
def tls_dealer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TlsDealer, Path]]:
    home = tmp_path / "tls"
    home.mkdir()
    crt, key = self_signed(home, "dealer")
    port = free_port()
    env = dealer_env(
        home,
        f"sqlite+aiosqlite:///{home / 'td.db'}",
        port,
        TOKENDEALER_ISSUER=f"https://127.0.0.1:{port}",
        TOKENDEALER_CERTFILE=str(crt),
        TOKENDEALER_KEYFILE=str(key),
    )
    server = TlsDealer(env=env, port=port, log_path=home / "dealer.log")
    with monkeypatch.context() as patch:  # the readiness probe of this test process trusts it
        patch.setenv("SSL_CERT_FILE", str(crt))
        server.start()
    yield server, crt
    server.stop()


def test_a_certificate_is_verified_against_the_ca_bundle(
    tls_dealer: tuple[TlsDealer, Path], tmp_path: Path
) -> None:
    dealer, crt = tls_dealer
    ops = admin_client(runner(dealer.env), dealer.url)
    env = remote_env(tmp_path, dealer, **secret_of(ops))
    line = one_line(runner(env, "--url", dealer.url)("keys", "list", status=1))
    assert "TLS" in line and "TOKENDEALER_CA_BUNDLE" in line

    env["TOKENDEALER_CA_BUNDLE"] = str(crt)
    listed = json.loads(runner(env, "--url", dealer.url)("clients", "list", "--json").stdout)
    assert [client["client_id"] for client in listed] == [ops["client_id"]]


# -- the local mode, through the same operations ------------------------------------------------


def test_key_commands_without_a_database_change_the_keys_and_warn(tmp_path: Path) -> None:
    """The file key store works without the database; only the audit event is missing,
    and a warning says so (rotating a leaked key must not wait for a database)."""
    env = dealer_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'td.db'}", free_port())
    run = runner(env)
    run("init", status=0)
    (tmp_path / "td.db").unlink()
    before = json.loads(run("keys", "list", "--json", status=0).stdout)
    rotated = run("keys", "rotate", "--json", status=0)
    assert json.loads(rotated.stdout)[1]["kid"] == before[1]["kid"]  # the next key signs now
    assert "warning: keys.rotate is not in the audit record: no database at" in rotated.stderr
    assert TRACEBACK not in rotated.stderr
    assert "run tokendealer init" in one_line(run("clients", "list", status=1))
