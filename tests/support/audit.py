"""The administrative audit events, as ``tokendealer audit --json`` shows them."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.conftest import TOKENDEALER


def dealer_rotations(env: dict[str, str], *options: str) -> list[dict[str, Any]]:
    """The dealers' own scheduled rotations (``keys.rotate`` whose actor is a dealer)."""
    events = json.loads(
        subprocess.run(
            [*TOKENDEALER, "audit", "--json", *options],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    return [
        event
        for event in events
        if event["action"] == "keys.rotate" and event["actor"]["kind"] == "dealer"
    ]
