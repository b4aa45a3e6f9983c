"""The audit log never records a secret sent in the client id's place (security review, 5)."""

from __future__ import annotations

import base64
import json

import httpx

from tests.conftest import DealerServer


def audit_lines(dealer: DealerServer) -> list[dict]:
    return [json.loads(line) for line in dealer.log().splitlines() if line.startswith("{")]


def test_swapped_credentials_leave_no_secret_in_the_log(dealer: DealerServer) -> None:
    client = dealer.create_client("--audience", "jeeves")
    client_id, secret = client["client_id"], client["client_secret"]
    token_url = f"{dealer.url}/oauth/token"
    swapped = {"grant_type": "client_credentials", "client_id": secret, "client_secret": client_id}
    assert httpx.post(token_url, data=swapped, timeout=5).status_code == 401
    basic = "Basic " + base64.b64encode(f"{secret}:{client_id}".encode()).decode()
    answer = httpx.post(
        token_url,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic},
        timeout=5,
    )
    assert answer.status_code == 401
    # A wrong secret for a real client and an unknown id of our shape are logged as they are.
    wrong = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": "x"}
    assert httpx.post(token_url, data=wrong, timeout=5).status_code == 401
    unknown = {**wrong, "client_id": "0123456789abcdef01234567"}
    assert httpx.post(token_url, data=unknown, timeout=5).status_code == 401

    failures = [line for line in audit_lines(dealer) if line["event"] == "authentication_failed"]
    assert [line["reason"] for line in failures] == ["unknown_client"] * 2 + [
        "wrong_secret",
        "unknown_client",
    ]
    hashed = failures[0]["client_id"]
    assert hashed.startswith("sha256:") and len(hashed) == len("sha256:") + 16
    assert failures[1]["client_id"] == hashed  # the same text, the same hash: repeats show
    assert failures[2]["client_id"] == client_id
    assert failures[3]["client_id"] == "0123456789abcdef01234567"
    assert secret not in dealer.log()
