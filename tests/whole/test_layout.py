"""The package layout stays readable: few modules at the top, no near-twin names in a folder.

The import rules themselves are import-linter contracts (``pyproject.toml``),
run by ``make test``; these are the two rules of the layout it cannot check.
"""

from __future__ import annotations

import itertools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tokendealer"
AFFIXES = ("s", "es", "_io", "io", "_cache", "cache", "_store", "store", "er", "ing")


def modules(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.py"))


def near_twins(a: str, b: str) -> bool:
    """One name plus a plural or an affix (client/clients, asgi/asgi_io, keys/keyring)."""
    a, b = a.lstrip("_"), b.lstrip("_")
    short, long = sorted((a, b), key=len)
    return long != short and long.startswith(short) and long[len(short) :] in AFFIXES


def test_at_most_six_modules_at_the_top() -> None:
    top = modules(PACKAGE)
    assert len(top) <= 6, top


def test_no_folder_holds_near_twin_names() -> None:
    folders = [PACKAGE, *(p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__")]
    twins = [
        (folder.relative_to(PACKAGE.parent), a, b)
        for folder in folders
        for a, b in itertools.combinations(modules(folder), 2)
        if near_twins(a, b)
    ]
    assert not twins


def test_the_near_twin_rule_catches_the_old_names() -> None:
    assert near_twins("client", "clients")
    assert near_twins("revocation", "revocations")
    assert near_twins("asgi", "asgi_io")
    assert near_twins("client", "client_cache")
    assert not near_twins("client", "cli")
    assert not near_twins("registry", "client_cache")
