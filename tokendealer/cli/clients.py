"""``tokendealer clients ...``: register and manage clients.

Each command is one operation of :mod:`tokendealer.cli.backend` (here, or at
``--url``) and prints only what it answers, in the ``--json`` shape, so the
output is the same both ways. ``disable``, ``enable`` and ``set-keys`` are
updates of those fields (``PATCH`` in the admin API).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click

from tokendealer.cli.backend import administer
from tokendealer.cli.shared import emit, fail, load_settings


@click.group()
def clients() -> None:
    """Register and manage clients."""


def client_lines(facts: dict[str, Any], secret: str | None = None) -> list[str]:
    rows = [("client_id", facts["client_id"])]
    if secret is not None:
        rows.append(("client_secret", secret))
    rows += [
        ("name", facts["name"]),
        ("scope", facts["scope"] or "(none)"),
        ("audience", " ".join(facts["audience"])),
        ("token_ttl", facts["token_ttl"] or "(default)"),
        ("enabled", "yes" if facts["enabled"] else "no"),
        ("authentication", facts["token_endpoint_auth_method"]),
    ]
    if facts.get("jwks_uri"):
        rows.append(("jwks_uri", facts["jwks_uri"]))
    elif facts.get("jwks"):
        kids = [key.get("kid", key["kty"]) for key in facts["jwks"]["keys"]]
        rows.append(("jwks", f"{len(kids)} key(s): {' '.join(kids)}"))
    if facts.get("previous_secret_valid_until"):
        rows.append(("old secret until", facts["previous_secret_valid_until"]))
    return [f"{name:<16} {value}" for name, value in rows]


def show_client(facts: dict[str, Any], as_json: bool) -> None:
    """A client's facts; with ``client_secret`` (a new one), the secret line and, for a
    human, that it is shown only now. A key client has no secret: none is printed."""
    secret = facts.get("client_secret")
    emit(facts, as_json, client_lines(facts, secret))
    if secret is not None and not as_json:
        click.echo("The secret is shown only now; only its hash is stored.", err=True)


def run(operation: Callable[[Any], Awaitable[Any]]) -> Any:
    """A client operation's answer (``data``), here or at ``--url``."""
    return administer(load_settings(), "database", operation).data


def read_jwks(path: str | None) -> Any:
    """The JWK Set in ``path`` (``-``: stdin) as JSON, or None; one line when unreadable."""
    if path is None:
        return None
    from tokendealer.store.client_keys import ClientKeyError, parse_jwks

    try:
        with click.open_file(path, "rb") as handle:
            return parse_jwks(handle.read(MAX_JWKS_FILE))
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    except ClientKeyError as exc:
        fail(f"{path}: {exc}")


MAX_JWKS_FILE = 64 * 1024 + 1  # one byte past the limit, so a larger file is refused
jwks_option = click.option(
    "--jwks", "jwks_file", metavar="FILE", help="A JWK Set of public keys: private_key_jwt."
)
jwks_uri_option = click.option(
    "--jwks-uri", metavar="URL", help="Where the client publishes its JWK Set: private_key_jwt."
)


@clients.command("create")
@click.option("--name", required=True, help="Who the client is, for humans.")
@click.option("--scope", default="", help='Allowed scopes, space separated: "read write".')
@click.option("--audience", "audiences", multiple=True, help="An allowed audience (repeatable).")
@click.option(
    "--ttl", type=click.IntRange(min=1), help="Token lifetime in seconds, at most TOKEN_TTL."
)
@jwks_option
@jwks_uri_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def clients_create(
    name: str,
    scope: str,
    audiences: tuple[str, ...],
    ttl: int | None,
    jwks_file: str | None,
    jwks_uri: str | None,
    as_json: bool,
) -> None:
    """Register a client; prints its id and its secret (shown once).

    With --jwks or --jwks-uri the client signs assertions (private_key_jwt) with
    its private key instead, and has no secret at all.
    """
    if not audiences:
        fail("a client needs at least one audience: --audience AUD (repeatable)")
    if jwks_file is not None and jwks_uri is not None:
        fail("give --jwks or --jwks-uri, not both")
    jwks = read_jwks(jwks_file)
    facts = run(
        lambda admin: admin.create_client(name, scope, audiences, ttl, jwks=jwks, jwks_uri=jwks_uri)
    )
    show_client(facts, as_json)


@clients.command("set-keys")
@click.argument("client_id")
@jwks_option
@jwks_uri_option
@click.option("--json", "as_json", is_flag=True)
def clients_set_keys(
    client_id: str, jwks_file: str | None, jwks_uri: str | None, as_json: bool
) -> None:
    """Replace a client's public keys (a secret client then uses private_key_jwt, and its
    secret stops working)."""
    if (jwks_file is None) == (jwks_uri is None):
        fail("give --jwks FILE or --jwks-uri URL (one of them)")
    jwks = read_jwks(jwks_file)
    facts = run(lambda admin: admin.update_client(client_id, jwks=jwks, jwks_uri=jwks_uri))
    emit(facts, as_json, client_lines(facts))


@clients.command("list")
@click.option("--json", "as_json", is_flag=True)
def clients_list(as_json: bool) -> None:
    """List clients (never their secrets)."""
    facts = run(every_client)
    rows = [
        [f["client_id"], "yes" if f["enabled"] else "no", f["name"], f["scope"]]
        + [" ".join(f["audience"])]
        for f in facts
    ]
    header = ["client_id", "enabled", "name", "scope", "audience"]
    emit(facts, as_json, table(header, rows) if rows else ["no clients yet"])


async def every_client(admin: Any) -> Any:
    """Every page (``Link rel="next"`` remotely; locally one page holds all)."""
    from tokendealer.admin import Answer

    page = await admin.list_clients()
    found = list(page.items)
    while page.next_cursor is not None:
        page = await admin.list_clients(cursor=page.next_cursor)
        found += page.items
    return Answer(found)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns as wide as their widest cell, two spaces apart (the last one ragged)."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _client_command(name: str, doc: str, action: Callable[[Any, str], Awaitable[Any]]) -> None:
    @clients.command(name, help=doc)
    @click.argument("client_id")
    @click.option("--json", "as_json", is_flag=True)
    def command(client_id: str, as_json: bool) -> None:
        facts = run(lambda admin: action(admin, client_id))
        lines = [f"deleted client {client_id}"] if name == "delete" else client_lines(facts)
        emit(facts, as_json, lines)


_client_command("show", "Show one client.", lambda admin, cid: admin.show_client(cid))
_client_command(
    "disable",
    "Stop a client getting tokens.",
    lambda admin, cid: admin.update_client(cid, enabled=False),
)
_client_command(
    "enable",
    "Let a disabled client get tokens again.",
    lambda admin, cid: admin.update_client(cid, enabled=True),
)
_client_command("delete", "Delete a client for good.", lambda admin, cid: admin.delete_client(cid))


@clients.command("update")
@click.argument("client_id")
@click.option("--name", help="A new name.")
@click.option("--scope", help='The allowed scopes, replacing them: "read write".')
@click.option(
    "--audience", "audiences", multiple=True, help="The allowed audiences, replacing them."
)
@click.option(
    "--ttl", type=click.IntRange(min=1), help="Token lifetime in seconds, at most TOKEN_TTL."
)
@click.option("--json", "as_json", is_flag=True)
def clients_update(
    client_id: str,
    name: str | None,
    scope: str | None,
    audiences: tuple[str, ...],
    ttl: int | None,
    as_json: bool,
) -> None:
    """Change a client's name, scopes, audiences or token lifetime (its secret stays)."""
    if name is None and scope is None and not audiences and ttl is None:
        fail("nothing to change: give --name, --scope, --audience or --ttl", status=2)
    facts = run(
        lambda admin: admin.update_client(
            client_id, name=name, scope=scope, audience=audiences or None, ttl=ttl
        )
    )
    emit(facts, as_json, client_lines(facts))


@clients.command("rotate-secret")
@click.argument("client_id")
@click.option(
    "--grace",
    default=0,
    type=click.IntRange(min=0),
    show_default=True,
    help="Seconds the old secret keeps working.",
)
@click.option(
    "--revoke-tokens",
    is_flag=True,
    help="Also revoke every token the client holds now (a leaked secret).",
)
@click.option("--json", "as_json", is_flag=True)
def clients_rotate_secret(client_id: str, grace: int, revoke_tokens: bool, as_json: bool) -> None:
    """Give a client a new secret; the old one works for --grace seconds more.

    With --revoke-tokens, the tokens it holds stop working at every service
    (within TOKENDEALER_STATUS_LIST_TTL) while the client itself stays enabled.
    """
    show_client(run(lambda admin: admin.rotate_secret(client_id, grace, revoke_tokens)), as_json)
