"""``tokendealer keys ...``: the key set: list, rotate, prune, revoke, rewrap, import.

Each works on the configured store (``TOKENDEALER_KEY_STORE``: the key
directory, or the database). None of them creates a key set (``tokendealer
init`` and ``serve`` do): without one they fail in one line naming where they
looked. ``list`` only reads, so it works on a read-only key directory; the
others write and say so when they cannot.

``list``, ``rotate``, ``prune`` and ``revoke`` are operations of
:mod:`tokendealer.cli.backend` (here, or at ``--url``) and print only what they
answer. ``rewrap`` and ``import`` need the key store itself: never remote.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tokendealer.cli.backend import administer, local
from tokendealer.cli.shared import (
    emit,
    fail,
    load_settings,
    require_local,
    run_key_store,
    warn,
)
from tokendealer.config import SIGNING_ALGORITHMS
from tokendealer.keys.keyset import KeySet
from tokendealer.keys.schedule import PRUNE_LEEWAY_SECONDS

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

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


def run(operation: Callable[[Any], Awaitable[Any]]) -> Any:
    """A key operation's answer (``data``), here or at ``--url``."""
    return administer(load_settings(), "keys", operation).data


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
def keys_list(as_json: bool) -> None:
    """The published keys and their states (public facts only)."""
    facts = run(lambda admin: admin.list_keys())
    emit(facts, as_json, key_lines(facts))


@keys.command("rotate")
@click.option("--alg", type=click.Choice(SIGNING_ALGORITHMS), help="Algorithm of the new next key.")
@click.option("--json", "as_json", is_flag=True)
def keys_rotate(alg: str | None, as_json: bool) -> None:
    """next -> current (signs now), current -> retired (still published), new next."""
    facts = run(lambda admin: admin.rotate_keys(alg))
    emit(facts, as_json, [rotation_line(facts), *key_lines(facts)])


def rotation_line(facts: list[dict[str, Any]]) -> str:
    """What a rotation did, from the key set after it: the key retired last is the one
    that signed before (the newest ``retired_at``, then ``activated_at``)."""

    def moment(value: str | None) -> datetime:
        return datetime.fromisoformat((value or "0001-01-01T00:00:00Z").replace("Z", "+00:00"))

    def one(state: str) -> str:
        return next((f["kid"] for f in facts if f["state"] == state), "-")

    retired = [f for f in facts if f["state"] == "retired"]
    last = max(
        retired,
        key=lambda f: (moment(f["retired_at"]), moment(f["activated_at"])),
        default={"kid": "-"},
    )
    return (
        f"rotated: {one('current')} signs now, {last['kid']} retired, {one('next')} is the next key"
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
    removed = run(lambda admin: admin.prune_keys(leeway))
    emit(
        removed,
        as_json,
        [f"pruned {f['kid']} ({f['alg']}, retired {f['retired_at']})" for f in removed]
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
    require_local(settings, "keys rewrap")

    async def rewrap(store: KeyStorage, engine: AsyncEngine) -> tuple[int, int, str]:
        moved, keyset = await store.rewrap()
        if moved:
            await record(settings, engine, store, "keys.rewrap", "keyset", store.where)
        return moved, len(keyset.keys), store.where

    moved, total, where = run_key_store(settings, rewrap)
    line = (
        f"rewrapped {moved} of {total} private keys in {where}: "
        "all are now encrypted under TOKENDEALER_KEY_PASSPHRASE"
        if moved
        else f"rewrapped 0 private keys: all {total} in {where} are already encrypted "
        "under TOKENDEALER_KEY_PASSPHRASE"
    )
    emit({"rewrapped": moved, "keys": total, "path": where}, as_json, [line])


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
    require_local(settings, "keys import")
    if settings.key_store == "file" and directory.resolve() == settings.keys_dir.resolve():
        fail(f"{directory} is TOKENDEALER_KEYS_DIR itself: nothing to import")

    source = str(directory.absolute())

    async def import_keys(store: KeyStorage, engine: AsyncEngine) -> tuple[KeySet, str]:
        keyset = await asyncio.to_thread(read_key_directory, directory, settings)
        imported = await store.import_keys(keyset, replace)
        await record(settings, engine, store, "keys.import", "keyset", source)
        return imported, store.where

    keyset, where = run_key_store(settings, import_keys)
    facts = [key.facts() for key in keyset.keys]
    emit(
        {"imported": len(facts), "into": where, "keys": facts},
        as_json,
        [f"imported {len(facts)} keys from {directory} into {where}", *key_lines(facts)],
    )


async def record(
    settings: Any, engine: AsyncEngine, store: KeyStorage, action: str, kind: str, id_: str
) -> None:
    """The audit event of a change made on the store itself (a warning when the database
    cannot take it: the change stands)."""
    answer = await local(settings, engine, store).record_key_event(action, kind, id_)
    warn(answer.warnings)


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
    answer = run(lambda admin: admin.revoke_key(kid))
    revoked, facts = answer["revoked"], answer["keys"]
    current = next((f["kid"] for f in facts if f["state"] == "current"), "-")
    emit(
        answer,
        as_json,
        [
            f"revoked {revoked['kid']} (was {revoked['state']}); now signing with {current}",
            *key_lines(facts),
        ],
    )
