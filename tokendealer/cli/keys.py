"""``tokendealer keys ...``: the key set: list, rotate, prune, revoke, rewrap, import.

Each works on the configured store (``TOKENDEALER_KEY_STORE``: the key
directory, or the database). None of them creates a key set (``tokendealer
init`` and ``serve`` do): without one they fail in one line naming where they
looked. ``list`` only reads, so it works on a read-only key directory; the
others write and say so when they cannot.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tokendealer.cli.audit import record_key_event
from tokendealer.cli.shared import emit, fail, load_settings, run_keys
from tokendealer.config import SIGNING_ALGORITHMS
from tokendealer.keys.keyset import KeySet
from tokendealer.keys.schedule import PRUNE_LEEWAY_SECONDS, retired_key_lifetime

if TYPE_CHECKING:
    from tokendealer.keys.store import KeyStorage


@click.group()
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


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
def keys_list(as_json: bool) -> None:
    """The published keys and their states (public facts only)."""
    settings = load_settings()
    keyset = run_keys(settings, lambda store: store.load())
    facts = [key.facts() for key in keyset.keys]
    emit(facts, as_json, key_lines(facts))


@keys.command("rotate")
@click.option("--alg", type=click.Choice(SIGNING_ALGORITHMS), help="Algorithm of the new next key.")
@click.option("--json", "as_json", is_flag=True)
def keys_rotate(alg: str | None, as_json: bool) -> None:
    """next -> current (signs now), current -> retired (still published), new next."""
    settings = load_settings()
    rotated = run_keys(settings, lambda store: store.rotate(alg or settings.signing_alg))
    assert rotated is not None  # unconditional: always rotates (or fails)
    before, after = rotated
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
    record_key_event(settings, "keys.rotate", "key", after.current.kid)


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
    lifetime = retired_key_lifetime(settings, leeway)
    removed = run_keys(settings, lambda store: store.prune(lifetime))
    facts = [key.facts() for key in removed]
    emit(
        facts,
        as_json,
        [f"pruned {key.kid} ({key.alg}, retired {key.facts()['retired_at']})" for key in removed]
        or ["nothing to prune"],
    )
    if removed:
        record_key_event(settings, "keys.prune", "key", " ".join(key.kid for key in removed))


@keys.command("rewrap")
@click.option("--json", "as_json", is_flag=True)
def keys_rewrap(as_json: bool) -> None:
    """Encrypt every private key under TOKENDEALER_KEY_PASSPHRASE (after setting or changing it).

    Keys without encryption or under TOKENDEALER_KEY_PASSPHRASE_PREVIOUS move to the
    passphrase; keys already under it stay as they are. The kids do not change.
    """
    settings = load_settings()

    async def rewrap(store: KeyStorage) -> tuple[int, int, str]:
        moved, keyset = await store.rewrap()
        return moved, len(keyset.keys), store.where

    moved, total, where = run_keys(settings, rewrap)
    line = (
        f"rewrapped {moved} of {total} private keys in {where}: "
        "all are now encrypted under TOKENDEALER_KEY_PASSPHRASE"
        if moved
        else f"rewrapped 0 private keys: all {total} in {where} are already encrypted "
        "under TOKENDEALER_KEY_PASSPHRASE"
    )
    emit({"rewrapped": moved, "keys": total, "path": where}, as_json, [line])
    if moved:
        record_key_event(settings, "keys.rewrap", "keyset", where)


@keys.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace the key set the store holds already.")
@click.option("--json", "as_json", is_flag=True)
def keys_import(directory: Path, replace: bool, as_json: bool) -> None:
    """Copy a file key set (DIRECTORY/keyset.json) into the configured store.

    Kids, states and timestamps stay; the private keys are read with
    TOKENDEALER_KEY_PASSPHRASE or its previous one (or unencrypted) and stored
    the way the configured store keeps them. DIRECTORY is never written.
    """
    from tokendealer.keys.store import read_key_directory

    settings = load_settings()
    if settings.key_store == "file" and directory.resolve() == settings.keys_dir.resolve():
        fail(f"{directory} is TOKENDEALER_KEYS_DIR itself: nothing to import")

    async def import_keys(store: KeyStorage) -> tuple[KeySet, str]:
        keyset = await asyncio.to_thread(read_key_directory, directory, settings)
        return await store.import_keys(keyset, replace), store.where

    keyset, where = run_keys(settings, import_keys)
    facts = [key.facts() for key in keyset.keys]
    emit(
        {"imported": len(facts), "into": where, "keys": facts},
        as_json,
        [f"imported {len(facts)} keys from {directory} into {where}", *key_lines(facts)],
    )
    record_key_event(settings, "keys.import", "keyset", str(directory.absolute()))


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
    revoked, after = run_keys(settings, lambda store: store.revoke(kid, settings.signing_alg))
    facts = [key.facts() for key in after.keys]
    emit(
        {"revoked": revoked.facts(), "keys": facts},
        as_json,
        [
            f"revoked {revoked.kid} (was {revoked.state}); now signing with {after.current.kid}",
            *key_lines(facts),
        ],
    )
    record_key_event(settings, "keys.revoke", "key", revoked.kid)
