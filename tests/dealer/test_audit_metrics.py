"""The audit log and /metrics: the expected lines and series, and never a secret or a token.

The first tests use the Quart test client (metrics are then this process's
own, so they compare before and after); the last runs ``tokendealer serve
--workers 2`` and checks that /metrics adds up both workers.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import basic
from tokendealer.dealer.audit import presented_client_id
from tokendealer.dealer.state import dealer_state
from tokendealer.store.registry import IssuedSecret

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PEER = {"client": ("203.0.113.5", 4711)}
AUDIT_KEYS = {
    "time",
    "event",
    "outcome",
    "reason",
    "client_id",
    "scope",
    "audience",
    "jti",
    "kid",
    "source",
    "endpoint",
}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, by (name, labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def audit_lines(records: Iterable[logging.LogRecord]) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in records if r.name == "tokendealer.audit"]


async def post(http: Any, path: str, form: dict, headers: dict) -> Any:
    return await http.post(path, data=urlencode(form), headers={**FORM, **headers}, scope_base=PEER)


async def test_audit_lines_for_tokens_failures_and_revocations(app_factory, caplog):
    caplog.set_level(logging.DEBUG)  # everything any logger says
    app = await app_factory()
    http = app.test_client()
    issued = await dealer_state(app).registry.create("audited", "read write", ["jeeves"])
    client_id = issued.client.client_id
    wrong = IssuedSecret(issued.client, "wrong-secret-that-must-not-be-logged")
    grant = {"grant_type": "client_credentials"}

    ok = await post(http, "/oauth/token", {**grant, "scope": "read"}, basic(issued))
    access_token = (await ok.get_json())["access_token"]
    jti = jwt.decode(access_token, options={"verify_signature": False})["jti"]
    assert (await post(http, "/oauth/token", grant, basic(wrong))).status_code == 401
    ghost_form = {**grant, "client_id": "ghost", "client_secret": issued.secret}
    assert (await post(http, "/oauth/token", ghost_form, {})).status_code == 401
    assert (await post(http, "/oauth/token", grant, {})).status_code == 401
    refused = await post(http, "/oauth/token", {**grant, "scope": "admin"}, basic(issued))
    assert refused.status_code == 400
    revoked = await post(http, "/oauth/revoke", {"token": access_token}, basic(issued))
    assert revoked.status_code == 200

    lines = audit_lines(caplog.records)
    for line in lines:
        assert set(line) == AUDIT_KEYS and TIME.fullmatch(line["time"])
        assert line["source"] == "203.0.113.5"
    assert [(line["event"], line["outcome"], line["reason"]) for line in lines] == [
        ("token_issued", "success", None),
        ("authentication_failed", "failure", "wrong_secret"),
        ("authentication_failed", "failure", "unknown_client"),
        ("authentication_failed", "failure", "missing_credentials"),
        ("token_refused", "failure", "invalid_scope"),
        ("token_revoked", "success", None),
    ]
    issued_line = lines[0]
    assert issued_line["client_id"] == client_id and issued_line["endpoint"] == "token"
    assert issued_line["scope"] == "read" and issued_line["audience"] == ["jeeves"]
    assert issued_line["jti"] == jti
    # The key that signed it, as its header says (the current key), and only on this event.
    assert issued_line["kid"] == jwt.get_unverified_header(access_token)["kid"]
    assert issued_line["kid"] == dealer_state(app).keyring.keyset.current.kid
    assert [line["kid"] for line in lines[1:]] == [None] * 5
    assert lines[1]["client_id"] == client_id
    assert lines[2]["client_id"] == presented_client_id("ghost")  # not our shape: hashed
    assert lines[4]["scope"] == "admin"
    assert lines[5]["jti"] == jti and lines[5]["endpoint"] == "revoke"

    everything = caplog.text + "".join(str(r.args) for r in caplog.records)
    for secret in (issued.secret, wrong.secret, access_token, access_token.split(".")[2]):
        assert secret not in everything


async def test_metrics_count_tokens_failures_latency_and_show_the_keys(app_factory):
    app = await app_factory()
    http = app.test_client()
    issued = await dealer_state(app).registry.create("measured", "read", ["jeeves"])
    client_id = issued.client.client_id
    before = samples(await (await http.get("/metrics")).get_data(as_text=True))

    grant = {"grant_type": "client_credentials"}
    for _ in range(3):
        assert (await post(http, "/oauth/token", grant, basic(issued))).status_code == 200
    wrong = IssuedSecret(issued.client, "wrong")
    assert (await post(http, "/oauth/token", grant, basic(wrong))).status_code == 401
    bad_scope = {**grant, "scope": "admin"}
    assert (await post(http, "/oauth/token", bad_scope, basic(issued))).status_code == 400

    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = await response.get_data(as_text=True)
    after = samples(text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    issued_series = "tokendealer_token_requests_total"
    assert value(after, issued_series, client_id=client_id, outcome="issued") == 3
    assert value(after, issued_series, client_id=client_id, outcome="invalid_scope") == 1
    assert delta(issued_series, client_id="", outcome="invalid_client") == 1
    failures = "tokendealer_auth_failures_total"
    assert delta(failures, endpoint="token", reason="wrong_secret") == 1
    latency = "tokendealer_request_duration_seconds"
    assert delta(f"{latency}_count", endpoint="token") == 5
    assert delta(f"{latency}_bucket", endpoint="token", le="+Inf") == 5
    assert delta("tokendealer_http_responses_total", endpoint="token", status="200") == 3
    assert delta("tokendealer_http_responses_total", endpoint="token", status="401") == 1

    keyset = dealer_state(app).keyring.keyset
    current = keyset.current
    info = "tokendealer_signing_key_info"
    assert value(after, info, kid=current.kid, alg=current.alg, state="current") == 1
    assert value(after, info, kid=keyset.next.kid, alg=keyset.next.alg, state="next") == 1
    assert 0 <= value(after, "tokendealer_signing_key_age_seconds") < 600
    assert value(after, "tokendealer_keyset_stale") == 0
    # Three tokens of a new client: one block of status-list indices, reserved once.
    assert delta("tokendealer_status_blocks_reserved_total") == 1
    assert 0 <= value(after, "tokendealer_status_lists_check_age_seconds") < 5
    assert issued.secret not in text


def test_metrics_add_up_every_worker_of_serve(dealer_factory, sqlite_url: str, tmp_path: Path):
    """``serve --workers 2``: whichever worker answers /metrics reports both."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    dealer = dealer_factory(sqlite_url, workers=2, TMPDIR=str(scratch))
    dealer.start()
    created = dealer.create_client("--scope", "read", "--audience", "jeeves")
    client_id, secret = created["client_id"], created["client_secret"]
    tokens: list[str] = []

    def fetch(good: bool) -> int:
        response = httpx.post(
            f"{dealer.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client_id, secret if good else "wrong"),
            headers={"Connection": "close"},  # a new connection each: either worker
        )
        if response.status_code == 200:
            tokens.append(response.json()["access_token"])
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(fetch, [True] * 24 + [False] * 3))
    assert statuses.count(200) == 24 and statuses.count(401) == 3

    (metrics_dir,) = scratch.glob("tokendealer-metrics-*")
    pids = {path.stem.rsplit("_", 1)[-1] for path in metrics_dir.glob("*.db")}
    assert len(pids) == 2, f"both workers should have served: {sorted(pids)}"
    for _ in range(6):  # whichever worker answers, the sums are the same
        with httpx.Client() as http:
            text = http.get(f"{dealer.url}/metrics", headers={"Connection": "close"}).text
        found = samples(text)
        series = "tokendealer_token_requests_total"
        assert value(found, series, client_id=client_id, outcome="issued") == 24
        failures = "tokendealer_auth_failures_total"
        assert value(found, failures, endpoint="token", reason="wrong_secret") == 3
        assert value(found, "tokendealer_keyset_stale") == 0

    assert dealer.stop() == 0
    assert not metrics_dir.exists()  # removed when serve exits

    # The audit log is stdout's JSON lines; never a secret or a token anywhere in the logs.
    log = dealer.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    issued = [line for line in lines if line["event"] == "token_issued"]
    assert len(issued) == 24 and {line["client_id"] for line in issued} == {client_id}
    assert {line["kid"] for line in issued} == {jwt.get_unverified_header(tokens[0])["kid"]}
    assert {line["source"] for line in issued} == {"127.0.0.1"}
    assert sum(line["reason"] == "wrong_secret" for line in lines) == 3
    assert secret not in log
    for token in tokens:
        assert token not in log and token.split(".")[2] not in log
