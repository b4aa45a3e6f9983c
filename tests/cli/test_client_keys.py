"""``tokendealer clients create --jwks/--jwks-uri`` and ``clients set-keys``.

The CLI on SQLite, as an operator runs it; the last tests run a real dealer (``tokendealer
serve``) to show that what the CLI registered is what the dealer accepts: each
key type gets a token, and ``set-keys`` ends a client's secret.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cli.test_clients import one_line
from tests.conftest import DealerServer
from tests.support.client_keys import (
    ASSERTION_TYPE,
    ClientKey,
    ec_key,
    ed25519_key,
    rsa_key,
)
from tokendealer.cli import main


@pytest.fixture
def cli(tmp_path: Path):
    """The CLI in-process (click's runner: a subprocess per call would cost a second each)
    on an initialised SQLite dealer."""
    runner = CliRunner()
    env = {
        "TOKENDEALER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'td.db'}",
        "TOKENDEALER_KEYS_DIR": str(tmp_path / "keys"),
    }

    def run(*args: str, status: int = 0) -> Any:
        result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == status, (result.stdout, result.stderr)
        return result

    run("init")
    return run


def jwks_file(tmp_path: Path, document: Any, name: str = "jwks.json") -> str:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def _b64(number: int, length: int) -> str:
    return base64.urlsafe_b64encode(number.to_bytes(length, "big")).rstrip(b"=").decode()


def _private_rsa_jwk() -> dict[str, Any]:
    key = rsa_key()
    numbers = key.private.private_numbers()
    return {**key.public_jwk(), "d": _b64(numbers.d, 256), "p": _b64(numbers.p, 128)}


def _p384_jwk() -> dict[str, Any]:
    return {**ClientKey(ec.generate_private_key(ec.SECP384R1()), "ES256", "p384").public_jwk()}


UNFIT_KEYS: dict[str, tuple[Any, str]] = {
    "an oct key": ({"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldA", "kid": "s"}]}, "oct"),
    "private members": ({"keys": [_private_rsa_jwk()]}, "private members (d, p)"),
    "RSA 1024": ({"keys": [rsa_key("small", 1024).public_jwk()]}, "at least 2048 bits"),
    "P-384": ({"keys": [_p384_jwk()]}, "P-256"),
    "no keys": ({"keys": []}, "1 to 10 keys"),
    "not JSON": ("{not json", "not JSON"),
    "two keys, one kid": ({"keys": [ec_key().public_jwk(), ec_key().public_jwk()]}, "same kid"),
    "over 64 KiB": ({"keys": [ec_key().public_jwk()], "pad": "x" * 66000}, "64 KiB"),
}


@pytest.mark.parametrize("case", UNFIT_KEYS)
def test_unfit_keys_are_refused_in_one_line(cli, tmp_path: Path, case: str) -> None:
    document, says = UNFIT_KEYS[case]
    path = jwks_file(tmp_path, document)
    line = one_line(
        cli("clients", "create", "--name", "n", "--audience", "a", "--jwks", path, status=1)
    )
    assert says in line, line
    assert json.loads(cli("clients", "list", "--json").stdout) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--jwks-uri", "http://keys.example.com/jwks.json"], "https"),
        (["--jwks-uri", "ftp://127.0.0.1/jwks.json"], "https"),
        (["--jwks-uri", "https://user:pw@keys.example.com/jwks.json"], "password"),
        (["--jwks", "missing.json"], "cannot read"),
        (["--jwks", "jwks.json", "--jwks-uri", "https://keys.example.com/"], "not both"),
    ],
    ids=["http on another host", "ftp", "credentials", "no such file", "both"],
)
def test_unfit_key_sources_are_refused_in_one_line(cli, tmp_path, args, says) -> None:
    jwks_file(tmp_path, ec_key().jwks())
    args = [str(tmp_path / a) if a.endswith(".json") and "/" not in a else a for a in args]
    line = one_line(cli("clients", "create", "--name", "n", "--audience", "a", *args, status=1))
    assert says in line, line
    assert json.loads(cli("clients", "list", "--json").stdout) == []


def test_a_key_client_is_created_and_shown_without_a_secret(cli, tmp_path: Path) -> None:
    path = jwks_file(tmp_path, {"keys": [rsa_key().public_jwk(), ed25519_key().public_jwk()]})
    created = cli(
        "clients", "create", "--name", "signer", "--audience", "a", "--jwks", path, "--json"
    )
    facts = json.loads(created.stdout)
    assert facts.get("client_secret") is None
    assert "shown only now" not in created.stderr
    assert facts["token_endpoint_auth_method"] == "private_key_jwt"
    assert [key["kid"] for key in facts["jwks"]["keys"]] == ["rsa", "ed"]
    assert "jwks_uri" not in facts

    shown = json.loads(cli("clients", "show", facts["client_id"], "--json").stdout)
    assert "client_secret" not in shown
    assert shown["token_endpoint_auth_method"] == "private_key_jwt"
    assert shown["jwks"] == {"keys": [rsa_key().public_jwk(), ed25519_key().public_jwk()]}
    text = cli("clients", "show", facts["client_id"]).stdout
    assert "private_key_jwt" in text and "secret" not in text.replace("old secret", "")

    # Text output of create: no secret line either.
    created = cli("clients", "create", "--name", "again", "--audience", "a", "--jwks", path)
    assert "secret" not in created.stdout.lower() and "secret" not in created.stderr.lower()


def test_only_the_public_members_are_stored(cli, tmp_path: Path) -> None:
    """Members a JWK may carry besides its public key (key_ops, x5t, ...) are dropped."""
    jwk = {**ec_key().public_jwk(), "key_ops": ["verify"], "x5t": "abc", "ext": True}
    path = jwks_file(tmp_path, {"keys": [jwk]})
    facts = json.loads(
        cli("clients", "create", "--name", "n", "--audience", "a", "--jwks", path, "--json").stdout
    )
    assert facts["jwks"] == {"keys": [ec_key().public_jwk()]}


def test_a_jwks_uri_client_is_shown_with_its_uri(cli) -> None:
    uri = "https://keys.example.com/.well-known/jwks.json"
    facts = json.loads(
        cli(
            "clients", "create", "--name", "n", "--audience", "a", "--jwks-uri", uri, "--json"
        ).stdout
    )
    assert facts.get("client_secret") is None
    shown = json.loads(cli("clients", "show", facts["client_id"], "--json").stdout)
    assert shown["token_endpoint_auth_method"] == "private_key_jwt"
    assert shown["jwks_uri"] == uri and "jwks" not in shown and "client_secret" not in shown
    loopback = "http://127.0.0.1:8123/jwks.json"  # http is fine on loopback
    cli("clients", "create", "--name", "n", "--audience", "a", "--jwks-uri", loopback)


def test_a_secret_client_says_so(cli) -> None:
    facts = json.loads(cli("clients", "create", "--name", "n", "--audience", "a", "--json").stdout)
    assert facts["client_secret"]
    shown = json.loads(cli("clients", "show", facts["client_id"], "--json").stdout)
    assert shown["token_endpoint_auth_method"] == "client_secret_basic"
    assert "jwks" not in shown and "jwks_uri" not in shown


def test_set_keys_is_an_audit_event_and_rotate_secret_is_refused(cli, tmp_path: Path) -> None:
    facts = json.loads(cli("clients", "create", "--name", "n", "--audience", "a", "--json").stdout)
    client_id = facts["client_id"]
    path = jwks_file(tmp_path, ec_key().jwks())
    cli("clients", "set-keys", client_id, "--jwks", path)
    shown = json.loads(cli("clients", "show", client_id, "--json").stdout)
    assert shown["token_endpoint_auth_method"] == "private_key_jwt"
    assert shown["jwks"] == ec_key().jwks()

    uri = "https://keys.example.com/jwks.json"
    cli("clients", "set-keys", client_id, "--jwks-uri", uri)
    shown = json.loads(cli("clients", "show", client_id, "--json").stdout)
    assert shown["jwks_uri"] == uri and "jwks" not in shown

    events = json.loads(cli("audit", "--json").stdout)
    assert [(e["action"], e["outcome"]) for e in events] == [
        ("clients.set-keys", "done"),
        ("clients.set-keys", "done"),
        ("clients.create", "done"),
    ]
    assert events[0]["object"] == {"type": "client", "id": client_id}

    line = one_line(cli("clients", "rotate-secret", client_id, status=1))
    assert "private_key_jwt" in line and "set-keys" in line
    # Refusals of set-keys, each one line.
    bad = jwks_file(tmp_path, {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "bad.json")
    assert "oct" in one_line(cli("clients", "set-keys", client_id, "--jwks", bad, status=1))
    assert one_line(cli("clients", "set-keys", client_id, status=1))
    unknown = "0123456789abcdef01234567"
    assert one_line(cli("clients", "set-keys", unknown, "--jwks", path, status=1))
    assert json.loads(cli("clients", "show", client_id, "--json").stdout)["jwks_uri"] == uri


# -- what the CLI registered, a real dealer accepts ---------------------------------------------


def token(dealer: DealerServer, key: ClientKey, client_id: str) -> httpx.Response:
    return httpx.post(
        f"{dealer.url}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": key.assertion(client_id, dealer.url),
        },
    )


def test_rsa_ec_and_ed25519_clients_registered_by_the_cli_get_tokens(dealer, tmp_path) -> None:
    for key in (rsa_key(), ec_key(), ed25519_key()):
        path = jwks_file(tmp_path, key.jwks(), f"{key.kid}.json")
        client_id = dealer.create_client("--audience", "jeeves", "--jwks", path)["client_id"]
        response = token(dealer, key, client_id)
        assert response.status_code == 200, (key.alg, response.text)
        assert response.json()["token_type"] == "Bearer"


def test_set_keys_ends_the_secret(dealer, tmp_path) -> None:
    """A secret client given keys: its secret stops working (within the client cache's
    TTL, 2 s by default) and its assertions start to."""
    created = dealer.create_client("--audience", "jeeves")
    client_id, secret = created["client_id"], created["client_secret"]
    url = f"{dealer.url}/oauth/token"
    grant = {"grant_type": "client_credentials"}
    assert httpx.post(url, data=grant, auth=(client_id, secret)).status_code == 200

    key = ed25519_key()
    dealer.cli("clients", "set-keys", client_id, "--jwks", jwks_file(tmp_path, key.jwks()))
    deadline = time.monotonic() + 5
    while True:
        by_secret = httpx.post(url, data=grant, auth=(client_id, secret))
        by_key = token(dealer, key, client_id)
        if by_secret.status_code == 401 and by_key.status_code == 200:
            break
        assert time.monotonic() < deadline, (by_secret.text, by_key.text)
        time.sleep(0.2)
    assert by_secret.json()["error"] == "invalid_client"
    by_post = httpx.post(url, data={**grant, "client_id": client_id, "client_secret": secret})
    assert by_post.status_code == 401 and by_post.json()["error"] == "invalid_client"
