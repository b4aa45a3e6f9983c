"""The ``tokendealer`` command line: serve, clients ..., keys ...

Every failure an operator can cause (bad configuration, unknown id, unreachable
database, broken key set) ends in one line on stderr and a non-zero status,
never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click

from tokendealer.config import SIGNING_ALGORITHMS, ConfigError, Settings
from tokendealer.keys.file_store import KeyStore
from tokendealer.keys.keyset import KeySetError

T = TypeVar("T")
# Retired keys stay published this long past the token lifetime, for clock skew
# between hosts (the verifier's default leeway is 30 s) and JWKS caching.
PRUNE_LEEWAY_SECONDS = 60


def fail(message: str, status: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        fail(str(exc), status=2)


def emit(data: Any, as_json: bool, lines: Iterable[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for line in lines:
            click.echo(line)


def keystore(settings: Settings) -> KeyStore:
    return KeyStore.from_settings(settings)


def run_db(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(registry)`` against a migrated database, then dispose the engine."""
    from sqlalchemy.exc import SQLAlchemyError

    from tokendealer.store.database import create_engine, migrate
    from tokendealer.store.registry import ClientError, ClientRegistry

    async def main() -> T:
        engine = create_engine(settings.database_url, settings.db_timeout)
        try:
            async with asyncio.timeout(settings.db_timeout * 3):
                await migrate(engine)
            return await action(ClientRegistry(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except ClientError as exc:
        fail(str(exc))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        fail(f"the database is unreachable ({type(exc).__name__}); check TOKENDEALER_DATABASE_URL")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokendealer")
def main() -> None:
    """tokendealer: OAuth2 client-credentials tokens (RFC 6749 §4.4, RFC 9068)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# -- serve -------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), help="TLS certificate.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS private key.")
def serve(host: str, port: int, workers: int, certfile: str | None, keyfile: str | None) -> None:
    """Serve the dealer with hypercorn."""
    from tokendealer.serve.server import prepare_database, prepare_keys, run_server

    logging.getLogger().setLevel(logging.INFO)
    settings = load_settings()
    if bool(certfile) != bool(keyfile):
        fail("--certfile and --keyfile go together")
    try:
        prepare_keys(settings)
    except (KeySetError, OSError) as exc:
        fail(f"cannot load the key set: {exc}")
    try:
        prepare_database(settings)
    except Exception as exc:  # driver errors may quote the URL and its password: name the type
        fail(f"the database is unreachable ({type(exc).__name__}); check TOKENDEALER_DATABASE_URL")
    sys.exit(run_server(settings, host, port, workers, certfile, keyfile))


# -- clients -----------------------------------------------------------------


@main.group()
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
    ]
    if facts.get("previous_secret_valid_until"):
        rows.append(("old secret until", facts["previous_secret_valid_until"]))
    return [f"{name:<16} {value}" for name, value in rows]


def show_secret(issued: Any, as_json: bool) -> None:
    facts = issued.client.public_facts()
    emit({**facts, "client_secret": issued.secret}, as_json, client_lines(facts, issued.secret))
    if not as_json:
        click.echo("The secret is shown only now; only its hash is stored.", err=True)


@clients.command("create")
@click.option("--name", required=True, help="Who the client is, for humans.")
@click.option("--scope", default="", help='Allowed scopes, space separated: "read write".')
@click.option("--audience", "audiences", multiple=True, help="An allowed audience (repeatable).")
@click.option("--ttl", type=click.IntRange(min=1), help="Token lifetime in seconds (capped).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def clients_create(
    name: str, scope: str, audiences: tuple[str, ...], ttl: int | None, as_json: bool
) -> None:
    """Register a client; prints its id and its secret (shown once)."""
    if not audiences:
        fail("a client needs at least one audience: --audience AUD (repeatable)")
    settings = load_settings()
    issued = run_db(settings, lambda registry: registry.create(name, scope, audiences, ttl))
    show_secret(issued, as_json)


@clients.command("list")
@click.option("--json", "as_json", is_flag=True)
def clients_list(as_json: bool) -> None:
    """List clients (never their secrets)."""
    settings = load_settings()
    found = run_db(settings, lambda registry: registry.list())
    facts = [client.public_facts() for client in found]
    header = f"{'client_id':<18} {'enabled':<8} {'name':<24} {'scope':<24} audience"
    rows = [
        f"{f['client_id']:<18} {'yes' if f['enabled'] else 'no':<8} {f['name']:<24} "
        f"{f['scope']:<24} {' '.join(f['audience'])}"
        for f in facts
    ]
    emit(facts, as_json, [header, *rows] if rows else ["no clients yet"])


def _client_command(name: str, doc: str, action: Callable[[Any, str], Awaitable[Any]]) -> None:
    @clients.command(name, help=doc)
    @click.argument("client_id")
    @click.option("--json", "as_json", is_flag=True)
    def command(client_id: str, as_json: bool) -> None:
        settings = load_settings()
        client = run_db(settings, lambda registry: action(registry, client_id))
        facts = client.public_facts()
        lines = client_lines(facts)
        if name == "delete":
            facts, lines = {**facts, "deleted": True}, [f"deleted client {client_id}"]
        emit(facts, as_json, lines)


_client_command("show", "Show one client.", lambda r, cid: r.get(cid))
_client_command(
    "disable", "Stop a client getting tokens.", lambda r, cid: r.set_enabled(cid, False)
)
_client_command(
    "enable", "Let a disabled client get tokens again.", lambda r, cid: r.set_enabled(cid, True)
)
_client_command("delete", "Delete a client for good.", lambda r, cid: r.delete(cid))


@clients.command("rotate-secret")
@click.argument("client_id")
@click.option(
    "--grace",
    default=0,
    type=click.IntRange(min=0),
    show_default=True,
    help="Seconds the old secret keeps working.",
)
@click.option("--json", "as_json", is_flag=True)
def clients_rotate_secret(client_id: str, grace: int, as_json: bool) -> None:
    """Give a client a new secret; the old one works for --grace seconds more."""
    settings = load_settings()
    issued = run_db(settings, lambda registry: registry.rotate_secret(client_id, grace))
    show_secret(issued, as_json)


# -- keys --------------------------------------------------------------------


@main.group()
def keys() -> None:
    """Inspect and rotate the signing keys."""


def key_lines(facts: list[dict[str, Any]]) -> list[str]:
    header = (
        f"{'kid':<44} {'alg':<6} {'state':<8} {'created_at':<21} {'activated_at':<21} retired_at"
    )
    return [header] + [
        f"{f['kid']:<44} {f['alg']:<6} {f['state']:<8} {f['created_at']:<21} "
        f"{f['activated_at'] or '-':<21} {f['retired_at'] or '-'}"
        for f in facts
    ]


def _guard(action: Callable[[], T]) -> T:
    try:
        return action()
    except KeySetError as exc:
        fail(str(exc))
    except OSError as exc:  # a full disk, a read-only key dir: the write is all or nothing
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"cannot read or write the key set: {exc.strerror or exc}{where}")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
def keys_list(as_json: bool) -> None:
    """The published keys and their states (public facts only)."""
    settings = load_settings()
    store = keystore(settings)
    keyset, _ = _guard(lambda: store.ensure(settings.signing_alg))
    facts = [key.facts() for key in keyset.keys]
    emit(facts, as_json, key_lines(facts))


@keys.command("rotate")
@click.option("--alg", type=click.Choice(SIGNING_ALGORITHMS), help="Algorithm of the new next key.")
@click.option("--json", "as_json", is_flag=True)
def keys_rotate(alg: str | None, as_json: bool) -> None:
    """next -> current (signs now), current -> retired (still published), new next."""
    settings = load_settings()
    store = keystore(settings)
    _guard(lambda: store.ensure(settings.signing_alg))
    before, after = _guard(lambda: store.rotate(alg or settings.signing_alg))
    published_for = (datetime.now(UTC) - before.next.created_at).total_seconds()
    needed = settings.jwks_max_age + settings.keys_reload_interval
    if published_for < needed:
        click.echo(
            f"warning: the new current key {after.current.kid} was published only "
            f"{published_for:.0f} s ago, less than TOKENDEALER_JWKS_MAX_AGE + "
            f"TOKENDEALER_KEYS_RELOAD_INTERVAL ({needed:.0f} s): verifiers that cache the "
            "JWKS without refetching on an unknown kid may reject its tokens until they refetch",
            err=True,
        )
    facts = [key.facts() for key in after.keys]
    emit(
        facts,
        as_json,
        [
            f"rotated: {after.current.kid} signs now, {before.current.kid} retired, "
            f"{after.next.kid} is the next key",
            *key_lines(facts),
        ],
    )


@keys.command("prune")
@click.option(
    "--leeway",
    default=PRUNE_LEEWAY_SECONDS,
    show_default=True,
    type=click.IntRange(min=0),
    help="Seconds past TOKENDEALER_TOKEN_TTL a retired key stays, for clock skew.",
)
@click.option("--json", "as_json", is_flag=True)
def keys_prune(leeway: int, as_json: bool) -> None:
    """Drop retired keys whose tokens can no longer be valid."""
    settings = load_settings()
    store = keystore(settings)
    # A worker may sign with a just-retired key until it reloads: add the interval.
    lifetime = settings.token_ttl + settings.keys_reload_interval + leeway
    removed = _guard(lambda: store.prune(lifetime))
    facts = [key.facts() for key in removed]
    emit(
        facts,
        as_json,
        [f"pruned {key.kid} ({key.alg}, retired {key.facts()['retired_at']})" for key in removed]
        or ["nothing to prune"],
    )


@keys.command("rewrap")
@click.option("--json", "as_json", is_flag=True)
def keys_rewrap(as_json: bool) -> None:
    """Encrypt every private key under TOKENDEALER_KEY_PASSPHRASE (after setting or changing it).

    Keys without encryption or under TOKENDEALER_KEY_PASSPHRASE_PREVIOUS move to the
    passphrase; keys already under it stay as they are. The kids do not change.
    """
    settings = load_settings()
    store = keystore(settings)
    moved, keyset = _guard(store.rewrap)
    total = len(keyset.keys)
    line = (
        f"rewrapped {moved} of {total} private keys in {store.path}: "
        "all are now encrypted under TOKENDEALER_KEY_PASSPHRASE"
        if moved
        else f"rewrapped 0 private keys: all {total} in {store.path} are already encrypted "
        "under TOKENDEALER_KEY_PASSPHRASE"
    )
    emit({"rewrapped": moved, "keys": total, "path": str(store.path)}, as_json, [line])


class KidArgumentCommand(click.Command):
    """A kid is base64url and may start with "-" (even "-h..."): any word that is
    not one of the command's own options is the argument, never an option."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        own = {name for param in self.get_params(ctx) for name in getattr(param, "opts", ())}
        options = [arg for arg in args if arg in own and arg.startswith("-")]
        rest = [arg for arg in args if arg not in options and arg != "--"]
        return super().parse_args(ctx, [*options, "--", *rest])


@keys.command("revoke", cls=KidArgumentCommand)
@click.argument("kid")
@click.option("--json", "as_json", is_flag=True)
def keys_revoke(kid: str, as_json: bool) -> None:
    """Unpublish a leaked key at once; it never signs again."""
    settings = load_settings()
    store = keystore(settings)
    revoked, after = _guard(lambda: store.revoke(kid, settings.signing_alg))
    facts = [key.facts() for key in after.keys]
    emit(
        {"revoked": revoked.facts(), "keys": facts},
        as_json,
        [
            f"revoked {revoked.kid} (was {revoked.state}); now signing with {after.current.kid}",
            *key_lines(facts),
        ],
    )
