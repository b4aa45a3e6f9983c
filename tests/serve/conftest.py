"""Fixtures of the serve room."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import dealer_env, free_port
from tests.serve.split_streams import SplitDealer


@pytest.fixture
def split_dealer(tmp_path: Path) -> Iterator[Any]:
    """Builds (not starts) :class:`SplitDealer` s; stops every one at teardown.

    ``build(database_url, workers=1, name="dealer", **env)``: dealers of one test share
    the key dir; ``name`` keeps their output files apart.
    """
    built: list[SplitDealer] = []

    def build(
        database_url: str, workers: int = 1, name: str = "dealer", **extra_env: str
    ) -> SplitDealer:
        port = free_port()
        server = SplitDealer(
            env=dealer_env(tmp_path, database_url, port, **extra_env),
            port=port,
            workers=workers,
            stdout_path=tmp_path / f"{name}-{port}.stdout",
            stderr_path=tmp_path / f"{name}-{port}.stderr",
        )
        built.append(server)
        return server

    yield build
    for server in built:
        server.stop()
